"""Test helper: the `dynamics` distribution installed into a folder, and Python run outside the
repository with only that folder (and the test interpreter's own packages) importable."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install_library(tmp_path) -> str:
  """pip-installs the library (pyproject.toml) into <tmp_path>/target; returns that folder."""
  # A clean copy of what the distribution is built from, so the checkout gets no build/ dirs.
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(
      os.path.join(ROOT, 'dynamics'), src / 'dynamics', ignore=shutil.ignore_patterns('__pycache__')
  )
  target = tmp_path / 'target'
  install = subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'install',
          '-q',
          '--no-deps',
          '--no-build-isolation',
          '--no-index',
          '--disable-pip-version-check',
          '--target',
          str(target),
          str(src),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert install.returncode == 0, install.stdout + install.stderr
  return str(target)


def run_python(args, cwd, pythonpath, timeout=300) -> subprocess.CompletedProcess:
  """sys.executable with `args` in `cwd`, PYTHONPATH=`pythonpath` only, CPU JAX."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=pythonpath, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
