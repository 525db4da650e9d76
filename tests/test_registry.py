"""Metrics users register (dynamics/registry.py): computed in the step window and the epoch probe
with their nulls, checked against independent float64 references, and present in every output
of a training run (metrics.jsonl, TensorBoard, dynamics.npz, the reports and the ablation).

The registry is process-wide state: every test that registers restores it (fixture `clean`), so
no other test in this worker sees a metric registered here.
"""

import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import library_install  # tests/library_install.py
import numpy as np
import pytest
import scipy.signal

import dynamics
from dynamics import prefix, registry, tracker as tracker_lib

ROOT = library_install.ROOT


def X64():
  return jax.enable_x64(True)


@pytest.fixture
def clean():
  """Restores the registry (and forgets the example modules) after the test."""
  saved = dict(registry._registered)  # pylint: disable=protected-access
  yield
  registry._registered.clear()  # pylint: disable=protected-access
  registry._registered.update(saved)  # pylint: disable=protected-access
  for module in ('examples.phase_locking',):
    sys.modules.pop(module, None)


def _plv_reference(x: np.ndarray, method: str = 'detrend') -> float:
  """float64, scipy: the mean over pairs of |mean_t exp(i (phi_a - phi_b))|."""
  z = np.asarray(dynamics.preprocess(x, method), np.float64)
  phi = np.angle(scipy.signal.hilbert(z))
  pairs = [
      abs(np.mean(np.exp(1j * (phi[a] - phi[b]))))
      for a in range(len(phi))
      for b in range(a + 1, len(phi))
  ]
  return float(np.mean(pairs))


def _signals(seed=0, signals=5, length=48):
  return np.random.default_rng(seed).standard_normal((signals, length)).cumsum(-1)


def _spec(**fields):
  return tracker_lib.MetricSpec.from_config(dynamics.as_config(fields))


# ----- the example metric against references and known answers -------------------------------


def test_phase_locking_equals_its_float64_reference_and_known_answers(clean):
  importlib.import_module('examples.phase_locking')
  with X64():
    x = _signals()
    dcfg = dynamics.as_config({})
    spec = _spec()
    assert [m.name for m in spec.extra] == ['phase_locking']
    got = tracker_lib.compute_metrics(jnp.asarray(x), spec, tracker_lib.resolve_scales(dcfg, 48))
    assert float(got['phase_locking']) == pytest.approx(_plv_reference(x), abs=1e-12)
    # Known answers: one signal copied with offsets and gains is locked (PLV 1); independent
    # white noise is far from it.
    t = np.arange(200)
    base = np.sin(2 * np.pi * t / 17) + 0.3 * np.sin(2 * np.pi * t / 5)
    locked = np.stack([base * g + o for g, o in ((1, 0), (2, 3), (0.5, -1))])
    assert float(tracker_lib.compute_metrics(jnp.asarray(locked), spec, None)['phase_locking']) == (
        pytest.approx(1.0, abs=1e-9)
    )
    noise = np.random.default_rng(3).standard_normal((6, 200))
    assert float(tracker_lib.compute_metrics(jnp.asarray(noise), spec, None)['phase_locking']) < 0.3


def test_masked_probe_form_equals_the_metric_of_the_sliced_history(clean):
  # The probe computes every history length n with one program over a padded buffer; the
  # registered metric there must equal the metric of x[:, :n], with its null, at every n.
  importlib.import_module('examples.phase_locking')
  with X64():
    x = _signals(1, length=30)
    dcfg = dynamics.as_config({})
    spec = _spec()
    plan = tracker_lib.probe_plan(dcfg, 30, spec)
    key = jax.random.key(7)
    for n in (1, 3, 4, 5, 11, 30):
      masked = prefix.compute_metrics(jnp.asarray(x), n, spec, plan.expanding, key)
      sliced = tracker_lib.compute_metrics(
          jnp.asarray(x[:, :n]), spec, tracker_lib.resolve_scales(dcfg, n), key
      )
      for name in ('phase_locking', 'phase_locking_z', 'phase_locking_p', 'metastability'):
        np.testing.assert_allclose(masked[name], sliced[name], atol=1e-9, err_msg=f'{name} n={n}')
      if n < 4:  # shorter than the phase metrics' minimum: undefined, not an artefact
        assert np.isnan(float(masked['phase_locking']))
      else:
        assert float(masked['phase_locking']) == pytest.approx(_plv_reference(x[:, :n]), abs=1e-9)


def test_signal_metric_without_null_and_a_less_sided_test(clean):
  with X64():
    x = _signals(2)

    def lag1(x, valid):  # mean lag-1 autocorrelation over the valid samples
      w = (valid[:, 1:] & valid[:, :-1]).astype(x.dtype)
      xc = x - jnp.sum(x * valid, -1, keepdims=True) / jnp.sum(valid, -1, keepdims=True)
      return jnp.mean(jnp.sum(w * xc[:, 1:] * xc[:, :-1], -1) / jnp.sum(valid * xc * xc, -1))

    dynamics.register_metric('lag1', lag1, null=None)
    dynamics.register_metric('lag1_less', lag1, null='shuffle', alternative='less')
    spec = _spec(surrogates=19)
    out = tracker_lib.compute_metrics(jnp.asarray(x), spec, None, jax.random.key(0))
    expected = np.mean([_lag1_ref(r) for r in x])
    assert float(out['lag1']) == pytest.approx(expected, abs=1e-12)
    assert 'lag1_z' not in out and 'lag1_less_z' in out
    # A random walk's lag-1 autocorrelation is far above every shuffle's: 'less' finds p = 1.
    assert float(out['lag1_less_p']) == pytest.approx(1.0)
    assert spec.output_names(True)[-2:] == ('lag1_less_z', 'lag1_less_p')


def _lag1_ref(r):
  d = r - r.mean()
  return float(np.sum(d[1:] * d[:-1]) / np.sum(d * d))


def test_builtins_unchanged_by_a_registered_metric(clean):
  x = jnp.asarray(_signals(4).astype(np.float32))
  scales = tracker_lib.resolve_scales(dynamics.as_config({}), 48)
  before = tracker_lib.compute_metrics(x, _spec(), scales, jax.random.key(1))
  importlib.import_module('examples.phase_locking')
  after = tracker_lib.compute_metrics(x, _spec(), scales, jax.random.key(1))
  for name in tracker_lib.METRICS + tracker_lib.NULL_KEYS:
    np.testing.assert_allclose(after[name], before[name], rtol=1e-6, err_msg=name)
  assert set(after) - set(before) == {'phase_locking', 'phase_locking_z', 'phase_locking_p'}
  # With nothing registered the outputs are the built-ins, in their long-standing order.
  assert registry.output_names((), True) == (tracker_lib.METRICS + tracker_lib.NULL_KEYS)


# ----- the tracker: step and probe mode, export ------------------------------------------------


def test_tracker_computes_registered_metrics_in_step_and_probe_mode(clean):
  importlib.import_module('examples.phase_locking')
  shapes = {'a': (4, 3), 'b': (4, 5), 'c': (4, 2)}
  dcfg = {'window': 24, 'volatility_window_steps': 4, 'surrogates': 19}
  with pytest.warns(dynamics.RunFitWarning, match='epoch-mode integration'):  # 6 epochs: short
    tracker = dynamics.make_tracker(dcfg, shapes, num_steps=30, num_epochs=6)
  state = tracker.init()
  rng = np.random.default_rng(0)
  step = jax.jit(tracker.record_step, donate_argnums=0)
  for t in range(30):
    taps = {
        k: jnp.asarray(rng.standard_normal(s).cumsum(0), jnp.float32) for k, s in shapes.items()
    }
    state, out = step(state, taps, t)
  assert {'dynamics/phase_locking', 'dynamics/phase_locking_z', 'dynamics/phase_locking_p'} <= set(
      out
  )
  assert np.isfinite(float(out['dynamics/phase_locking']))
  assert 'dynamics/phase_locking' in tracker.summarize_step(jax.device_get(out))
  probe = jax.jit(tracker.probe_update)
  for _ in range(6):
    state = probe(state, jnp.asarray(rng.standard_normal(3), jnp.float32))
  exported = tracker.export(state)
  # The window metric at the last step is the metric of the last 24 recorded signals.
  window = exported['step_signals'][:, -24:]
  with X64():
    assert exported['step_phase_locking'][-1] == pytest.approx(_plv_reference(window), abs=2e-5)
    history = exported['probe_signals']
    for e in range(6):
      expected = _plv_reference(history[:, : e + 1]) if e + 1 >= 4 else np.nan
      np.testing.assert_allclose(exported['probe_phase_locking'][e], expected, atol=2e-5)
  for key in ('probe_phase_locking_z', 'probe_sliding_phase_locking', 'step_phase_locking_p'):
    assert key in exported


# ----- errors -----------------------------------------------------------------------------------


def test_registration_errors_name_the_problem_and_the_fix(clean):
  fn = lambda x, valid: jnp.sum(jnp.where(valid, x, 0)) / jnp.sum(valid)  # noqa: E731
  with pytest.raises(ValueError, match='identifier'):
    dynamics.register_metric('my metric', fn)
  with pytest.raises(ValueError, match='taken'):
    dynamics.register_metric('dsi', fn)
  with pytest.raises(ValueError, match='taken'):
    dynamics.register_metric('foo_z', fn)
  with pytest.raises(ValueError, match="needs='phase'"):
    dynamics.register_metric('foo', fn, needs='phase')
  with pytest.raises(ValueError, match="null='phases'"):
    dynamics.register_metric('foo', fn, null='phases')
  with pytest.raises(ValueError, match='alternative'):
    dynamics.register_metric('foo', fn, alternative='bigger')
  with pytest.raises(TypeError, match='callable'):
    dynamics.register_metric('foo', 3)
  dynamics.register_metric('foo', fn)
  with pytest.raises(ValueError, match='already registered; pass replace=True'):
    dynamics.register_metric('foo', fn)
  dynamics.register_metric('foo', fn, replace=True)
  dynamics.unregister_metric('foo')
  with pytest.raises(KeyError, match='not registered'):
    dynamics.unregister_metric('foo')
  with pytest.raises(ValueError, match='built-in'):
    dynamics.unregister_metric('integration')
  # A fn that reads the masked samples would give the padded epoch probe wrong values silently:
  # refused at registration, as is one that returns a vector.
  with pytest.raises(ValueError, match='reads samples where valid is False'):
    dynamics.register_metric('unmasked', lambda x, valid: jnp.mean(x))
  with pytest.raises(ValueError, match='returned shape \\(4,\\).*scalar'):
    dynamics.register_metric('per_signal', lambda x, valid: jnp.mean(x, -1))
  with pytest.raises(ValueError, match='failed on a test window'):
    dynamics.register_metric('broken', lambda x, valid: x @ x)
  # Without the check, a vector is still named when the tracker traces it.
  dynamics.register_metric('per_signal', lambda x, valid: jnp.mean(x, -1), check=False)
  with pytest.raises(ValueError, match="'per_signal' returned shape \\(5,\\).*scalar"):
    tracker_lib.compute_metrics(jnp.asarray(_signals()), _spec(), None)
  with pytest.raises(ValueError, match="metric_modules: cannot import 'no_such_module'"):
    _spec(metric_modules='no_such_module')


# ----- a training run: every output --------------------------------------------------------------


def _events(workdir):
  from tensorboard.backend.event_processing import event_accumulator

  files = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, files[0]))
  acc.Reload()
  return set(acc.Tags()['scalars'])


def test_a_run_with_a_registered_metric_writes_it_everywhere(tmp_path):
  workdir = tmp_path / 'run'
  train = library_install.run_python(
      [
          'train.py',
          '--config=configs/tiny.py',
          '--config.dynamics.metric_modules=examples.phase_locking',
          f'--workdir={workdir}',
      ],
      cwd=ROOT,
      pythonpath=ROOT,
      timeout=600,
  )
  assert train.returncode == 0, train.stderr[-3000:]
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert any(np.isfinite(r.get('dynamics/phase_locking', np.nan)) for r in records)
  assert any('dynamics/phase_locking_z' in r for r in records)
  assert {'dynamics/phase_locking', 'dynamics/phase_locking_p'} <= _events(workdir)
  npz = np.load(workdir / 'dynamics.npz')
  for key in ('step_phase_locking', 'step_phase_locking_z', 'probe_phase_locking'):
    assert key in npz, key
  assert np.isfinite(npz['step_phase_locking']).sum() > 0

  run = lambda *args: library_install.run_python(  # noqa: E731
      ['analyze.py', *args], cwd=ROOT, pythonpath=ROOT, timeout=600
  )
  one = run(f'--workdir={workdir}')
  assert one.returncode == 0, one.stderr[-3000:]
  assert 'Registered metric phase_locking: last step window' in (workdir / 'report.md').read_text()
  study = run(f'--runs={workdir}', f'--out={tmp_path / "study"}')
  assert study.returncode == 0, study.stderr[-3000:]
  text = (tmp_path / 'study' / 'report.md').read_text()
  assert '## Registered metrics' in text and '| phase_locking | step window |' in text
  ablate = run(
      'ablate',
      f'--runs={workdir}',
      '--grid',
      'phase_preprocess=demean',
      f'--out={tmp_path / "abl"}',
  )
  assert ablate.returncode == 0, ablate.stderr[-3000:]
  csv = (tmp_path / 'abl' / 'ablation.csv').read_text()
  assert 'phase_preprocess=demean,phase_locking,step,window' in csv
  assert '## phase_locking' in (tmp_path / 'abl' / 'ablation.md').read_text()


# ----- a script outside the repository: the installed package, NNX and the registry ------------


def test_nnx_registry_example_runs_outside_the_repository_on_the_installed_package(tmp_path):
  target = library_install.install_library(tmp_path)
  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  script = outside / 'nnx_registry.py'
  script.write_text(open(os.path.join(ROOT, 'examples', 'nnx_registry.py')).read())
  result = library_install.run_python(
      [str(script)],
      cwd=str(outside),
      pythonpath=target,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert 'step 420: permutation entropy' in out and '(z ' in out, out
  assert 'epoch 14:' in out and 'probe integration nan' not in out.split('epoch 14:')[1], out
  first, last = (float(v) for v in out.split('loss: first 20 steps ')[1].split(', last 20 '))
  assert last < 0.5 * first, out  # it trains
  assert 'Traceback' not in result.stderr
  assert 'RunFitWarning' not in result.stderr, result.stderr
