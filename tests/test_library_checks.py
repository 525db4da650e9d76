"""`dynamics` in anyone's loop (issue 27): donation, tap checks, run-length checks, clear errors,
defaults that agree, and the clu / nnx averages of the step outputs. Tiny trackers only."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics
from configs import tiny
from dynamics import run_length, tracker as tracker_lib
from training import fit as fit_lib

SHAPES = {'00_a': (4, 3), '01_b': (4, 2, 5), '02_c': (4, 2)}
DCFG = {'window': 24, 'volatility_window_steps': 4, 'probe_mode': False, 'surrogates': 1}
NUM_STEPS = 30


def _taps(t, batch=4):
  rng = np.random.default_rng(t)
  return {
      name: jnp.asarray(rng.standard_normal((batch,) + shape[1:]) + np.sin(0.2 * t * (i + 1)))
      for i, (name, shape) in enumerate(SHAPES.items())
  }


def _tracker(dcfg=None, shapes=None, num_steps=NUM_STEPS, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter('error', dynamics.RunFitWarning)  # these configs fit their runs
    return dynamics.make_tracker(
        DCFG if dcfg is None else dcfg, shapes or SHAPES, num_steps, **kwargs
    )


# ----- (1) donation ----------------------------------------------------------------------------


def test_every_state_entry_is_its_own_buffer_and_a_step_may_donate_the_state():
  with pytest.warns(dynamics.RunFitWarning, match='epoch-mode'):  # 3 epochs: no probe DFA
    tracker = dynamics.make_tracker(dict(DCFG, probe_mode=True), SHAPES, NUM_STEPS, 3)
  state = tracker.init()
  leaves = jax.tree.leaves(state)
  assert len(leaves) > 40
  assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)

  donated = jax.jit(tracker.record_step, donate_argnums=0)
  plain = jax.jit(tracker.record_step)
  kept = tracker.init()
  for t in range(NUM_STEPS):
    state, out = donated(state, _taps(t), t)
    kept, want = plain(kept, _taps(t), t)
  for key in kept:
    np.testing.assert_array_equal(state[key], kept[key], err_msg=key)
  assert np.isfinite(float(out['dynamics/dsi'])) and float(out['dynamics/dsi']) == float(
      want['dynamics/dsi']
  )


# ----- (2) taps checked against tap_shapes ------------------------------------------------------


def test_record_step_names_missing_extra_and_misshapen_taps_at_trace_time():
  tracker = _tracker()
  state = tracker.init()
  step = jax.jit(tracker.record_step)
  taps = _taps(0)
  step(state, taps, 0)  # as declared
  step(state, _taps(0, batch=7), 0)  # another batch size is fine (a probe batch)

  two = {k: v for k, v in taps.items() if k != '02_c'}
  with pytest.raises(ValueError, match=r'missing 02_c.*Expected the 3 taps 00_a \(B, 3\)'):
    step(state, two, 0)
  renamed = dict(two, c=taps['02_c'])
  with pytest.raises(ValueError, match='missing 02_c; not declared c'):
    step(state, renamed, 0)
  wrong = dict(taps, **{'01_b': jnp.zeros((4, 2, 6))})
  with pytest.raises(ValueError, match=r'01_b has shape \(4, 2, 6\), expected \(B, 2, 5\)'):
    step(state, wrong, 0)
  with pytest.raises(TypeError, match=r'taps is a list of 3 item\(s\).*00_a, 01_b, 02_c'):
    tracker.record_step(state, list(taps.values()), 0)
  with pytest.raises(ValueError, match='missing 02_c'):  # the probe path checks too
    tracker.reduce(two)


def test_a_proj_channel_mismatch_names_the_tap():
  tracker = _tracker(dict(DCFG, reduction='proj:2'), {'00_a': (3,), '01_b': (4, 5)})
  with pytest.raises(ValueError, match=r"00_a has 4 channels, expected 3 \(reduction='proj:2'"):
    tracker.reduce({'00_a': jnp.ones(4), '01_b': jnp.ones((2, 5))})
  with pytest.raises(ValueError, match=r'01_b has shape \(2, 6\), expected \(B, 5\)'):
    tracker.reduce({'00_a': jnp.ones(3), '01_b': jnp.ones((2, 6))})


def test_tap_shapes_that_are_not_a_dict_of_shapes_say_what_to_pass():
  pair = (jax.ShapeDtypeStruct((4, 3), jnp.float32), {'00_a': jax.ShapeDtypeStruct((4, 3), 'f')})
  with pytest.raises(TypeError, match=r'tuple of 2 item\(s\) \(one a dict.*\[1\]'):
    dynamics.make_tracker(DCFG, pair, NUM_STEPS)
  raw = {'intermediates': {'conv0': (jnp.zeros((4, 3)),)}}
  with pytest.raises(TypeError, match="tap_shapes\\['intermediates'\\] is a mapping.*raw"):
    dynamics.make_tracker(DCFG, raw, NUM_STEPS)
  with pytest.raises(TypeError, match="tap_shapes\\['a'\\] is a tuple.*raw"):
    dynamics.make_tracker(DCFG, {'a': (jnp.zeros((4, 3)),)}, NUM_STEPS)


# ----- (3) run length, in the library ------------------------------------------------------------


def test_make_tracker_refuses_a_window_longer_than_the_run_and_warns_what_it_cannot_compute():
  with pytest.raises(ValueError, match=r'dynamics.window=64 but the run has 30 steps.*window=24'):
    dynamics.make_tracker(dict(DCFG, window=64), SHAPES, NUM_STEPS)
  with pytest.raises(ValueError, match='volatility_window_steps=9 but the run computes only 7'):
    dynamics.make_tracker(dict(DCFG, volatility_window_steps=9), SHAPES, NUM_STEPS)
  with pytest.warns(dynamics.RunFitWarning, match='epoch-mode integration.*3 epoch'):
    dynamics.make_tracker(dict(DCFG, probe_mode=True), SHAPES, NUM_STEPS, num_epochs=3)
  with pytest.warns(dynamics.RunFitWarning, match='step-mode metrics need a window of at least'):
    tracker = dynamics.make_tracker({'probe_mode': False, 'window': 0}, SHAPES, 10)
  assert tracker.export(tracker.init())['step_signals'].shape == (3, 10)


def test_a_step_past_num_steps_is_dropped_with_a_warning_not_written_over_the_last():
  tracker = _tracker()
  step = jax.jit(tracker.record_step)
  state = tracker.init()
  for t in range(NUM_STEPS):
    state, _ = step(state, _taps(t), t)
  last = tracker.export(state)['step_signals'][:, -1]
  with pytest.warns(dynamics.RunFitWarning, match=r'step=30\) is past the run.*num_steps=30'):
    state, _ = step(state, _taps(99), NUM_STEPS)
    jax.block_until_ready(state)
    jax.effects_barrier()
  np.testing.assert_array_equal(tracker.export(state)['step_signals'][:, -1], last)


def _loop_and_library(config, total, per_epoch):
  """(notes, warnings) or the error of the loop's fit_to_run (training/fit.py) and the library's."""
  out = []
  for fit in (
      lambda: fit_lib.fit_to_run(config, total, per_epoch),
      lambda: run_length.fit_to_run(
          config.dynamics, total, steps_per_epoch=per_epoch, flag='--config.dynamics.'
      ),
  ):
    try:
      result = fit()
      dcfg = result.config.dynamics if hasattr(result.config, 'dynamics') else result.config
      kept = [w for w in result.warnings if not w.startswith('warmup_epochs')]
      out.append((result.notes, kept, dcfg.window, dcfg.volatility_window_steps))
    except ValueError as e:
      out.append(str(e))
  return out


@pytest.mark.parametrize(
    'overrides, total, per_epoch',
    [
        ({}, 24, 8),  # tiny: auto window, few epochs
        ({'window': 0, 'volatility_window_steps': 0}, 5000, 100),
        ({'window': 64}, 40, 8),
        ({'window': 16, 'volatility_window_steps': 30}, 40, 8),
        ({'window': 16, 'every_steps': 50}, 40, 8),
        ({'window': 16, 'sliding_epochs': 4, 'surrogates': 5}, 400, 8),
        ({'window': 0, 'dfa_min_scale': 4, 'dfa_max_divisor': 4}, 30, 10),
    ],
)
def test_the_library_checks_the_run_length_as_the_loop_does(overrides, total, per_epoch):
  config = tiny.get_config()
  config.dynamics.update(overrides)
  loop, library = _loop_and_library(config, total, per_epoch)
  assert library == loop


# ----- (4) small traps ---------------------------------------------------------------------------


def test_metric_spec_defaults_are_the_config_defaults():
  assert dynamics.MetricSpec() == dynamics.MetricSpec.from_config(dynamics.default_config())
  assert dynamics.MetricSpec().surrogates == 39


def test_resolve_scales_takes_a_plain_dict():
  assert dynamics.resolve_scales({'dfa_scales': '4,8,16'}, 64) == (4, 8, 16)
  assert dynamics.resolve_scales({}, 64) == dynamics.resolve_scales(dynamics.default_config(), 64)
  assert tracker_lib.resolve_scales({'dfa_min_scale': 4}, 8) is None


def test_step_average_ignores_the_steps_before_the_first_window():
  outputs = [
      {'dynamics/dsi': jnp.float32(v), 'dynamics/convergence_step': jnp.int32(-1), 'loss': 1.0}
      for v in (np.nan, np.nan, 0.5, np.nan, 1.5)
  ]
  average = dynamics.StepAverage.empty()
  assert average.compute() == {}
  merge = jax.jit(lambda a, out: a.merge(dynamics.StepAverage.from_step_output(out)))
  average = merge(dynamics.StepAverage.from_model_output(**outputs[0]), outputs[1])
  assert average.compute() == {} and average.undefined() == ['dynamics/dsi']
  for out in outputs[2:]:
    average = merge(average, out)
  assert average.compute() == {'dynamics/dsi': 1.0}
  assert average.reset().compute() == {} and average.reset().undefined() == ['dynamics/dsi']


def test_clu_and_nnx_averages_count_only_finite_values():
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  values = [np.nan, 0.5, np.nan, 1.5]
  clu_avg = dynamics.clu_average('dynamics/dsi')
  merged = clu_avg.empty()
  plain = clu_metrics.Average.empty()
  for v in values:
    merged = merged.merge(clu_avg.from_model_output(**{'dynamics/dsi': jnp.float32(v)}))
    plain = plain.merge(clu_metrics.Average.from_model_output(jnp.float32(v)))
  assert float(merged.compute()) == 1.0 and np.isnan(plain.compute())  # clu's own is poisoned

  nnx_avg = dynamics.nnx_average('dynamics/dsi')
  for v in values:
    nnx_avg.update(**{'dynamics/dsi': jnp.float32(v), 'loss': 0.0})
  assert float(nnx_avg.compute()) == 1.0
  nnx_avg.reset()
  assert int(nnx_avg.count[...]) == 0
  multi = nnx.MultiMetric(dsi=dynamics.nnx_average('dynamics/dsi'))
  multi.update(**{'dynamics/dsi': jnp.float32(2.0)})
  assert float(multi.compute()['dsi']) == 2.0


def test_an_nnx_model_with_batch_norm_takes_nnx_eval_shape_and_donates_the_tracker_state():
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.linear = nnx.Linear(5, 6, rngs=rngs)
      self.norm = nnx.BatchNorm(6, rngs=rngs)
      self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
      x = self.norm(self.linear(x))
      self.sow(nnx.Intermediate, 'normed', x)
      x = jnp.tanh(x)
      self.sow(nnx.Intermediate, 'out', x)
      return self.head(x)

  model = Net(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 5)), jnp.float32)
  with pytest.raises(Exception, match='different trace level'):  # docs/library.md
    jax.eval_shape(lambda: dynamics.nnx_apply_with_taps(model, x)[1])
  shapes = nnx.eval_shape(lambda m, x: dynamics.nnx_apply_with_taps(m, x)[1], model, x)
  tracker = _tracker(dict(DCFG, surrogates=0), shapes)
  optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

  @nnx.jit(donate_argnums=2)
  def step(model, optimizer, dyn, x, t):
    def loss_fn(model):
      logits, taps = dynamics.nnx_apply_with_taps(model, x)
      return jnp.mean(logits**2), taps

    (_, taps), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return tracker.record_step(dyn, taps, t)

  dyn = tracker.init()
  for t in range(NUM_STEPS):
    dyn, out = step(model, optimizer, dyn, x + 0.1 * t, t)
  assert np.isfinite(float(out['dynamics/integration']))
