"""`dynamics` as a library: installable, import boundary, taps from Linen `sow` and NNX, example.

The models here are written for these tests with Flax's own mechanisms only (Linen `self.sow`,
NNX `self.sow(nnx.Intermediate, ...)`); nothing in them knows about the tracker. Their taps are
checked against activations recomputed in numpy from the parameters, and the tracker's scalars
against the metric functions applied to the signals the tracker recorded.
"""

import dataclasses
import inspect
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import library_install  # tests/library_install.py
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import dynamics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough for a few dozen steps: 3 DFA scales (4, 5, 6) on a 24-step window.
DCFG = {'window': 24, 'volatility_window_steps': 4, 'probe_mode': False}
NUM_STEPS = 30
# Modules that `import dynamics` must never load (the library needs only jax and numpy).
FORBIDDEN = (
    'flax',
    'optax',
    'orbax',
    'clu',
    'ml_collections',
    'tensorflow',
    'models',
    'data',
    'training',
    'configs',
    'analysis',
)


def _run(code, cwd, pythonpath, timeout=300):
  return library_install.run_python(['-c', textwrap.dedent(code)], cwd, pythonpath, timeout)


# ----- packaging and the import boundary -------------------------------------------------------


def test_installed_package_imports_from_outside_the_repository(tmp_path):
  target = pathlib.Path(library_install.install_library(tmp_path))
  packages = sorted(p.name for p in target.iterdir() if not p.name.endswith('.dist-info'))
  assert packages == ['dynamics'], packages  # only the library, none of the project's packages

  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  result = _run(
      f"""
      import sys
      import dynamics
      assert dynamics.__file__.startswith({str(target)!r}), dynamics.__file__
      loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))
      assert not loaded, loaded
      import jax.numpy as jnp
      tracker = dynamics.make_tracker({DCFG!r}, {{'00_a': (2, 3), '01_b': (2, 5)}}, {NUM_STEPS})
      state, out = tracker.record_step(tracker.init(), {{'00_a': jnp.ones((2, 3)),
                                                         '01_b': jnp.zeros((2, 5))}}, 0)
      print(sorted(out), tracker.export(state)['step_signals'][:, 0].tolist())
      """,
      cwd=str(outside),
      pythonpath=str(target),
  )
  assert result.returncode == 0, result.stderr
  assert "'dynamics/integration'" in result.stdout and '[1.0, 0.0]' in result.stdout


def test_importing_dynamics_loads_no_flax_ml_collections_tensorflow_or_project_code(tmp_path):
  modules = sorted(
      f'dynamics.{f[:-3]}'
      for f in os.listdir(os.path.join(ROOT, 'dynamics'))
      if f.endswith('.py') and f != '__init__.py'
  )
  result = _run(
      f"""
      import sys
      import dynamics
      {'; '.join(f'import {m}' for m in modules)}
      tracker = dynamics.make_tracker(None, {{'00_a': (2, 3)}}, 300)
      loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))
      print('LOADED', loaded)
      """,
      cwd=str(tmp_path),
      pythonpath=ROOT,
  )
  assert result.returncode == 0, result.stderr
  assert 'LOADED []' in result.stdout, result.stdout
  assert 'dynamics.taps' in modules and 'dynamics.tracker' in modules  # the list is not empty


def test_without_ml_collections_the_config_is_a_plain_dict(tmp_path):
  result = _run(
      """
      import sys
      sys.modules['ml_collections'] = None  # as if it were not installed: import raises
      import dynamics
      c = dynamics.default_config()
      assert type(c) is dynamics.Config, type(c)
      c.window = 32
      assert c['window'] == 32 and c.reduction == 'mean'
      tracker = dynamics.make_tracker(c, {'00_a': (2, 3)}, 64)
      print('OK', tracker.tap_names)
      """,
      cwd=str(tmp_path),
      pythonpath=ROOT,
  )
  assert result.returncode == 0, result.stderr
  assert "OK ['00_a']" in result.stdout


@dataclasses.dataclass
class _DataclassConfig:
  window: int = 24
  volatility_window_steps: int = 4
  probe_mode: bool = False


def test_make_tracker_takes_a_dict_a_dataclass_or_a_config_dict_alike():
  config_dict = dynamics.default_config()
  assert isinstance(config_dict, ml_collections.ConfigDict)  # installed here
  config_dict.update(DCFG)
  shapes = {
      '00_a': (4, 3),
      '01_b': jax.ShapeDtypeStruct((4, 5), jnp.float32),
      '02_c': jnp.zeros((4, 2)),
  }
  rng = np.random.default_rng(0)
  taps = [
      {
          k: jnp.asarray(rng.standard_normal((4, s)), jnp.float32)
          for k, s in (('00_a', 3), ('01_b', 5), ('02_c', 2))
      }
      for _ in range(NUM_STEPS)
  ]
  exports = []
  for dcfg in (DCFG, _DataclassConfig(), config_dict):
    tracker = dynamics.make_tracker(dcfg, shapes, NUM_STEPS)
    state = tracker.init()
    assert 'probe_signals' not in state
    assert state['step_recent_signals'].shape == (3, tracker.recent_steps)
    for t, tap in enumerate(taps):
      state, _ = tracker.record_step(state, tap, t)
    exports.append(tracker.export(state))
  for other in exports[1:]:
    for key in ('step_signals', 'step_integration', 'step_dsi', 'step_scales'):
      np.testing.assert_array_equal(other[key], exports[0][key], err_msg=key)
  assert np.isfinite(exports[0]['step_integration'][-1])
  with pytest.raises(ValueError, match='windw'):
    dynamics.make_tracker({'windw': 24}, shapes, NUM_STEPS)
  with pytest.raises(ValueError, match='at least one tap'):
    dynamics.make_tracker(DCFG, {}, NUM_STEPS)


# ----- taps from Linen sow and NNX intermediates -----------------------------------------------


def _assert_metrics_match_the_functions(tracker, state, last_scalars):
  """The step-mode scalars of the last step equal the public metric functions applied to the
  window of signals the tracker recorded (and exported)."""
  series = tracker.export(state)
  window = int(series['step_window'])
  x = jnp.asarray(series['step_signals'][:, NUM_STEPS - window :])
  scales = tuple(int(s) for s in series['step_scales'])
  integration = dynamics.integration(x, scales)
  metastability = dynamics.metastability(x)
  expected = {
      'integration': integration,
      'metastability': metastability,
      'synchrony': dynamics.synchrony(x),
      'dsi': dynamics.stability_index(integration, metastability),
  }
  for name, value in expected.items():
    assert np.isfinite(float(value)), name
    np.testing.assert_allclose(
        float(last_scalars[f'dynamics/{name}']), float(value), rtol=1e-5, err_msg=name
    )
    np.testing.assert_allclose(series[f'step_{name}'][NUM_STEPS - 1], float(value), rtol=1e-5)
  np.testing.assert_allclose(series['step_alphas'], dynamics.dfa_exponent(x, scales), rtol=1e-5)


class LinenBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(self.features)(x))
    self.sow('intermediates', 'out', x)
    return x


class LinenNet(nn.Module):
  """A model this project has never seen: taps only through `self.sow`."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, name='embed')(x)
    self.sow('intermediates', 'stem', x)
    for i in range(3):
      x = LinenBlock(6, name=f'block{i}')(x)
    self.sow('intermediates', 'features', x)
    return nn.Dense(3, name='head')(x)


def _dense(params, x):
  return x @ np.asarray(params['kernel'], np.float64) + np.asarray(params['bias'], np.float64)


def test_linen_model_written_with_sow_is_tracked():
  model = LinenNet()
  x = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
  y = np.arange(16) % 3
  params = model.init(jax.random.key(0), x)['params']

  logits, taps = dynamics.apply_with_taps(model, {'params': params}, x)
  # Forward order, kept in the names; the sown values are the activations (numpy reference).
  assert list(taps) == ['00_stem', '01_block0/out', '02_block1/out', '03_block2/out', '04_features']
  h = _dense(params['embed'], x.astype(np.float64))
  reference = [h]
  for i in range(3):
    h = np.tanh(_dense(params[f'block{i}']['Dense_0'], h))
    reference.append(h)
  reference.append(h)
  for (name, value), ref in zip(taps.items(), reference):
    np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(logits, model.apply({'params': params}, x), rtol=1e-6)
  # capture_intermediates with a filter picks the same activations without any sow.
  _, captured = dynamics.apply_with_taps(
      model, {'params': params}, x, capture_intermediates=True, tap_filter=r'^block\d/__call__$'
  )
  assert list(captured) == ['00_block0/__call__', '01_block1/__call__', '02_block2/__call__']
  for got, want in zip(captured.values(), list(taps.values())[1:4]):
    np.testing.assert_array_equal(got, want)

  tap_shapes = jax.eval_shape(lambda: dynamics.apply_with_taps(model, {'params': params}, x)[1])
  tracker = dynamics.make_tracker(DCFG, tap_shapes, NUM_STEPS)
  assert tracker.tap_names == list(taps)
  tx = optax.sgd(0.1)

  @jax.jit
  def step(params, opt_state, dyn, x, t):
    def loss_fn(params):
      logits, taps = dynamics.apply_with_taps(model, {'params': params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), taps

    (loss, taps), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    dyn, scalars = tracker.record_step(dyn, taps, t)
    return optax.apply_updates(params, updates), opt_state, dyn, scalars

  first_params, opt_state, dyn = params, tx.init(params), tracker.init()
  for t in range(NUM_STEPS):
    params, opt_state, dyn, scalars = step(params, opt_state, dyn, x + 0.05 * t, t)
  # Step 0's signals are the means of the step-0 activations (parameters before any update).
  np.testing.assert_allclose(
      tracker.export(dyn)['step_signals'][:, 0], [r.mean() for r in reference], rtol=1e-4, atol=1e-6
  )
  assert not np.allclose(jax.tree.leaves(first_params)[0], jax.tree.leaves(params)[0])
  _assert_metrics_match_the_functions(tracker, dyn, jax.device_get(scalars))


class NnxBlock(nnx.Module):

  def __init__(self, features, rngs):
    self.linear = nnx.Linear(features, features, rngs=rngs)

  def __call__(self, x):
    x = jnp.tanh(self.linear(x))
    self.sow(nnx.Intermediate, 'out', x)
    return x


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.stem = nnx.Linear(5, 6, rngs=rngs)
    self.blocks = nnx.List([NnxBlock(6, rngs) for _ in range(3)])
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    self.sow(nnx.Intermediate, 'stem_out', x)
    for block in self.blocks:
      x = block(x)
    return self.head(x)


# Sowing outside nnx.capture is deprecated in Flax: the helper must not take that route.
@pytest.mark.filterwarnings('error:Using .Module.sow\\(\\). outside:DeprecationWarning')
def test_nnx_model_is_tracked_by_the_same_tracker_functions():
  model = NnxNet(nnx.Rngs(0))
  x = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
  y = np.arange(16) % 3

  def linear(layer, h):
    return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

  h = linear(model.stem, x.astype(np.float64))
  reference = {'stem_out': h}
  for i, block in enumerate(model.blocks):
    h = np.tanh(linear(block.linear, h))
    reference[f'blocks/{i}/out'] = h

  logits, taps = dynamics.nnx_apply_with_taps(model, x)
  # nnx.State keeps the module tree's order (names sorted, list items by index), not call order.
  assert list(taps) == ['00_blocks/0/out', '01_blocks/1/out', '02_blocks/2/out', '03_stem_out']
  for name, value in taps.items():
    np.testing.assert_allclose(
        value, reference[dynamics.display_name(name)], rtol=1e-4, atol=1e-5, err_msg=name
    )
  assert not nnx.state(model, nnx.Intermediate)  # nothing stays on the module
  np.testing.assert_allclose(logits, linear(model.head, h), rtol=1e-4, atol=1e-5)

  tracker = dynamics.make_tracker(DCFG, taps, NUM_STEPS)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, dyn, x, t):
    def loss_fn(model):
      logits, taps = dynamics.nnx_apply_with_taps(model, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), taps

    (_, taps), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return tracker.record_step(dyn, taps, t)

  dyn = tracker.init()
  for t in range(NUM_STEPS):
    dyn, scalars = step(model, optimizer, dyn, x + 0.05 * t, t)
  expected = [reference[dynamics.display_name(n)].mean() for n in tracker.tap_names]
  np.testing.assert_allclose(
      tracker.export(dyn)['step_signals'][:, 0], expected, rtol=1e-4, atol=1e-6
  )
  _assert_metrics_match_the_functions(tracker, dyn, jax.device_get(scalars))


def test_taps_from_intermediates_names_orders_and_rejects_empty_selections():
  x, y, z = jnp.zeros((2, 1)), jnp.ones((2, 2)), jnp.full((2, 3), 2.0)
  # A name sown twice gives one tap per call; integer keys (NNX lists) become path parts.
  taps = dynamics.taps_from_intermediates({'b': (x,), 'a': {0: {'out': (y, z)}}})
  assert list(taps) == ['00_b', '01_a/0/out/0', '02_a/0/out/1']
  assert [v.shape for v in taps.values()] == [(2, 1), (2, 2), (2, 3)]
  many = dynamics.taps_from_intermediates({f'l{i}': (x,) for i in range(101)})
  assert list(many)[:2] == ['000_l0', '001_l1'] and list(many) == sorted(many)
  assert dynamics.display_name('012_a/b') == 'a/b' and dynamics.display_name('stem') == 'stem'
  picked = dynamics.taps_from_intermediates(
      {'a': (x,), 'b': (y,)}, filter=lambda path, value: value.shape[-1] == 2
  )
  assert list(picked) == ['00_b']
  with pytest.raises(ValueError, match="filter='nothing'.*a, b"):
    dynamics.taps_from_intermediates({'a': (x,), 'b': (y,)}, filter='nothing')
  with pytest.raises(TypeError, match='filter=3'):
    dynamics.taps_from_intermediates({'a': (x,)}, filter=3)


# ----- the example and lint --------------------------------------------------------------------


def test_example_own_training_loop_runs_without_the_project_code(tmp_path):
  example = os.path.join(ROOT, 'examples', 'own_training_loop.py')
  result = _run(
      f"""
      import runpy, sys
      sys.argv = [{example!r}, '--steps', '160', '--window', '64']
      runpy.run_path(sys.argv[0], run_name='__main__')
      loaded = sorted({{m.split('.')[0] for m in sys.modules}}
                      & {{'models', 'data', 'training', 'configs'}})
      print('PROJECT MODULES', loaded)
      """,
      cwd=str(tmp_path),
      pythonpath=ROOT,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'PROJECT MODULES []' in out, out
  last = [line for line in out.splitlines() if line.startswith('step  160')][0]
  for name in ('integration', 'metastability', 'synchrony', 'dsi'):
    assert f' {name} ' in last, last
  assert 'per-tap DFA alpha' in out and 'conv1' in out and 'hidden' in out
  # 160 steps through a 64-step ring: the series drained by StepSeries are the whole run's.
  assert 'x 160 steps' in out, out


LIBRARY_FILES = [
    'dynamics/__init__.py',
    'dynamics/api.py',
    'dynamics/config.py',
    'models',
    'dynamics/taps.py',
    'dynamics/run_length.py',
    'dynamics/interop.py',
    'examples/own_training_loop.py',
    'tests/test_library.py',
    'tests/test_library_checks.py',
]


def test_ruff_passes_on_the_library_files():
  ruff = shutil.which('ruff') or os.path.join(os.path.dirname(sys.executable), 'ruff')
  if not os.path.exists(ruff):
    pytest.skip('ruff is not installed (requirements-dev.txt)')
  result = subprocess.run(
      [ruff, 'check', '--no-cache', *LIBRARY_FILES],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_function_of_dynamics_is_annotated():
  tracker = dynamics.make_tracker(DCFG, {'00_a': (2, 3)}, NUM_STEPS)
  functions = [
      getattr(dynamics, name)
      for name in dynamics.__all__
      if inspect.isfunction(getattr(dynamics, name))
  ]
  functions += [f for f in tracker if inspect.isfunction(f)]
  functions.append(dynamics.MetricSpec.from_config)
  assert len(functions) > 30
  missing = []
  for f in functions:
    signature = inspect.signature(f)
    for name, p in signature.parameters.items():
      if p.annotation is inspect.Parameter.empty and name not in ('self', 'cls'):
        missing.append(f'{f.__qualname__}({name})')
    if signature.return_annotation is inspect.Signature.empty:
      missing.append(f'{f.__qualname__} -> ?')
  assert not missing, missing


def test_recompute_from_an_export_equals_the_recorded_metrics_and_applies_a_definition():
  """dynamics.recompute on what a tracker recorded in a loop of one's own."""
  import dynamics

  rng = np.random.default_rng(0)
  dcfg = dynamics.default_config()
  dcfg.update(window=16, dfa_min_scale=3, dfa_max_divisor=2, volatility_window_steps=4)
  dcfg.update(probe_mode=False, surrogates=0)
  num_steps = 40
  tracker = dynamics.make_tracker(dcfg, {'a': (2, 3), 'b': (2, 3), 'c': (2, 3)}, num_steps)
  state = tracker.init()
  step = jax.jit(tracker.record_step)
  for t in range(num_steps):
    taps = {k: jnp.asarray(rng.standard_normal((2, 3)), jnp.float32) for k in 'abc'}
    state, _ = step(state, taps, t)
  recorded = tracker.export(state)
  same = dynamics.recompute(recorded, dcfg)['step']
  np.testing.assert_allclose(
      same['integration'], recorded['step_integration'], rtol=1e-5, equal_nan=True
  )
  other = dynamics.recompute(recorded, dcfg, phase_preprocess='demean')['step']
  with pytest.raises(ValueError, match='pass the definition'):
    dynamics.recompute({'step_signals': recorded['step_signals']})
  np.testing.assert_allclose(other['integration'], same['integration'], rtol=1e-5, equal_nan=True)
  assert not np.allclose(other['metastability'], same['metastability'], equal_nan=True)
