"""Test-wide settings: quiet TensorFlow, CPU only, repository root importable."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Many tests (and their subprocesses, which inherit this) compile the same tiny programs: a
# persistent compilation cache compiles each once per machine. Compiled code is the same
# binary either way, so no result depends on it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(ROOT, '.cache', 'jax_tests'))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The tests run with the XLA:CPU flags that train.py uses (set before JAX starts).
from training import runtime  # noqa: E402

runtime.configure_xla_cpu()
