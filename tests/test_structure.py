"""The code's shape, as the legibility rules state it: short functions in training/, modules of
about 700 lines at most, no import cycle, a recipe-sized train_and_evaluate, and an initial
state compiled cheaply without changing a bit of it."""

import ast
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs import tiny
from data import facts as facts_lib
from training import plan as plan_lib, programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('training', 'analysis', 'dynamics', 'data', 'models', 'configs')
MAX_FUNCTION_LINES = 80  # in training/
MAX_MODULE_LINES = 720  # "about 700"


def _modules():
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in sorted(files):
        if name.endswith('.py'):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          yield dotted.removesuffix('.__init__'), path


def _functions(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_training_is_longer_than_80_lines():
  long = [
      f'{dotted}.{name} ({n} lines)'
      for dotted, path in _modules()
      if dotted.startswith('training')
      for name, n in _functions(path)
      if n > MAX_FUNCTION_LINES
  ]
  assert not long, long


def test_no_module_is_much_longer_than_700_lines():
  long = []
  for dotted, path in _modules():
    with open(path) as f:
      n = len(f.read().splitlines())
    if n > MAX_MODULE_LINES:
      long.append(f'{dotted} ({n} lines)')
  assert not long, long


def test_train_and_evaluate_is_a_recipe_of_about_60_lines():
  lengths = dict(_functions(os.path.join(ROOT, 'training', 'loop.py')))
  assert lengths['train_and_evaluate'] <= 60, lengths['train_and_evaluate']


def _imports(dotted, path, known):
  """The project modules `dotted` imports at module level (what an import cycle is made of)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  package = dotted if path.endswith('__init__.py') else dotted.rpartition('.')[0]
  out = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[: len(package.split('.')) - node.level + 1] + [base])
        base = base.strip('.')
      # `from package import module` needs the module; `from module import name`, the module.
      names = [
          f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base
          for alias in node.names
      ]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name and name != dotted:
        out.add(name)
  return out


def test_no_import_cycle_between_project_modules():
  paths = dict(_modules())
  graph = {dotted: _imports(dotted, path, paths) for dotted, path in paths.items()}
  # A module importing a sibling through its package also runs the package's __init__.
  cycles = []

  @functools.lru_cache(maxsize=None)
  def reach(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in graph[todo.pop()]:
        if nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
    return frozenset(seen)

  for a in graph:
    for b in graph[a]:
      if a in reach(b) and not (a.startswith(b + '.') or b.startswith(a + '.')):
        cycles.append(f'{a} -> {b}')
  assert not cycles, sorted(cycles)


@pytest.mark.parametrize('model_name', ['resnet18_tiny'])
def test_the_initial_state_compiled_cheaply_has_the_same_bits(model_name):
  """programs.INITIAL_STATE_CPU_OPTIONS (XLA:CPU at -O1 for the one-off initial state) gives
  exactly the parameters of the default compile."""
  if jax.default_backend() != 'cpu':
    pytest.skip('the options apply to the CPU backend only')
  model = models.get(model_name, 4, dtype=jnp.float32)
  image = jnp.zeros((1, 32, 32, 3))
  init = jax.jit(lambda key: model.init({'params': key, 'dropout': key}, image, train=False))
  key = jax.random.PRNGKey(3)
  default = init(key)
  cheap = init.lower(key).compile(compiler_options=programs.INITIAL_STATE_CPU_OPTIONS)(key)
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), default, cheap))
  assert leaves and all(leaves)


def test_the_run_compiles_its_initial_state_with_the_cheap_options(monkeypatch):
  if jax.default_backend() != 'cpu':
    pytest.skip('the options apply to the CPU backend only')
  calls = []
  compile_ = jax.stages.Lowered.compile

  def spy(self, compiler_options=None):
    calls.append(compiler_options)
    return compile_(self, compiler_options=compiler_options)

  monkeypatch.setattr(jax.stages.Lowered, 'compile', spy)
  config = tiny.get_config()
  plan = plan_lib.make_plan(config, facts_lib.from_config(config.data), 1, 1)
  exp = programs.build_for(plan, programs.make_mesh(), jnp.zeros(3), jnp.ones(3))
  exp.init_state(0)
  exp.init_state(1)  # compiled once
  assert calls == [programs.INITIAL_STATE_CPU_OPTIONS]
