"""config.early_stop: the run stops (or decays its learning rate) when the convergence signal
fires; a stopped replica of a multi-seed run is frozen while the others train.

The signal is made to fire early on a tiny run: rho = 0.99 and patience 1, so the step-mode
signal fires at the first step whose DSI volatility (over 2 windows of 10 steps) falls below
its running maximum: in epoch 2 of this run (8 steps per epoch); min_epochs = 3 then decides
the stop epoch.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import (
    definitions as definitions_lib,
    early_stopping,
    runs as runs_lib,
    views as views_lib,
)
from configs import tiny
from training import early_stop, loop, replicas, steps, validate

SPE = 8  # steps per epoch: 256 images, batch 32
FIRE = {
    'num_epochs': 5,
    'log_every_steps': 4,
    'checkpoint_every_steps': 4,
    'dynamics.window': 10,
    'dynamics.volatility_window_steps': 2,
    'dynamics.convergence_rho': 0.99,
    'dynamics.convergence_patience': 1,
    'dynamics.convergence_warmup_steps': 0,
    'dynamics.surrogates': 0,
    'early_stop.enabled': True,
    'early_stop.signal': 'step',
    'early_stop.min_epochs': 3,
}


def _config(**fields):
  config = tiny.get_config()
  for key, value in {**FIRE, **fields}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _summary(folder):
  with open(os.path.join(folder, 'summary.json')) as f:
    return json.load(f)


def _eval_accuracy(folder):
  with open(os.path.join(folder, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {int(r['epoch']): r['eval/accuracy'] for r in rows if 'epoch' in r}


@pytest.fixture(scope='module')
def stopped(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('early') / 'run')
  return folder, loop.train_and_evaluate(_config(), folder)


def test_the_run_stops_at_min_epochs_saves_and_says_why(stopped):
  folder, result = stopped
  assert result['finished'] and result['final_step'] == 3 * SPE < result['total_steps']
  summary = _summary(folder)
  assert summary['stopped_early'] is True and summary['stop_epoch'] == 3
  assert 'step-mode convergence signal fired by epoch 3' in summary['early_stop_reason']
  assert sorted(_eval_accuracy(folder)) == [1, 2, 3]  # no epoch after the stop
  assert os.path.isdir(os.path.join(folder, 'checkpoints', str(3 * SPE)))


def test_a_stopped_run_restarted_trains_no_further(stopped):
  folder, result = stopped
  again = loop.train_and_evaluate(_config(), folder)
  assert again['final_step'] == result['final_step']
  assert _summary(folder)['stop_epoch'] == 3
  assert sorted(_eval_accuracy(folder)) == [1, 2, 3]


def test_an_interrupted_run_resumes_to_the_same_stop(stopped, tmp_path):
  folder, _ = stopped
  other = str(tmp_path / 'run')
  first = loop.train_and_evaluate(_config(), other, stop_after=SPE + 4)
  assert not first['finished']
  resumed = loop.train_and_evaluate(_config(), other)
  assert resumed['final_step'] == 3 * SPE and _summary(other)['stop_epoch'] == 3
  assert _eval_accuracy(other) == _eval_accuracy(folder)


@pytest.fixture(scope='module')
def decayed(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('decay') / 'run')
  config = _config(**{'early_stop.action': 'decay', 'early_stop.decay_factor': 0.5})
  return folder, loop.train_and_evaluate(config, folder)


def test_decay_multiplies_the_updates_after_the_signal_and_trains_on(decayed):
  folder, result = decayed
  assert result['final_step'] == result['total_steps'] == 5 * SPE
  summary = _summary(folder)
  assert summary['lr_decayed_at_epoch'] == 3 and 'stopped_early' not in summary


def test_the_report_replays_the_online_rule_on_a_full_length_run(stopped, decayed, tmp_path):
  """analysis.early_stopping.stop_epoch, applied to the full-length (decay) run's saved series,
  gives the epoch at which the online rule stopped: with min_epochs 3 (the `stopped` run) and
  with min_epochs 0 (a run that stops at the first epoch end after the signal, earlier)."""
  (definition,), _ = definitions_lib.build_definitions([runs_lib.load_run(decayed[0])])
  view = definition.views[0]
  assert view.has_step and int(view.step['convergence']) >= 0
  stop = early_stopping.stop_epoch(view, views_lib.STEP, 3)
  assert stop == _summary(stopped[0])['stop_epoch'] == 3
  early = str(tmp_path / 'run')
  loop.train_and_evaluate(_config(**{'early_stop.min_epochs': 0}), early)
  online = _summary(early)['stop_epoch']
  assert early_stopping.stop_epoch(view, views_lib.STEP, 0) == online < 3


def test_apply_to_step_freezes_only_the_stopped_replica():
  config = _config()
  old = steps.TrainState(
      step=jnp.zeros((2,), jnp.int32),
      params={'w': jnp.zeros((2, 3))},
      batch_stats={},
      opt_state={'m': jnp.zeros((2, 3))},
      rng=jnp.zeros((2, 2), jnp.uint32),
      dynamics={'d': jnp.zeros((2,))},
      early_stop={'epoch': jnp.asarray([3, -1], jnp.int32)},
  )
  new = old.replace(
      step=old.step + 1,
      params={'w': jnp.ones((2, 3))},
      opt_state={'m': jnp.ones((2, 3))},
      dynamics={'d': jnp.ones((2,))},
  )
  for impl in replicas.IMPLS[1:]:
    out = replicas.map_replicas(lambda o, n: early_stop.apply_to_step(config, o, n), impl)(old, new)
    np.testing.assert_array_equal(out.step, [1, 1])  # the loop's counter moves for both
    for tree in (out.params['w'], out.opt_state['m'], out.dynamics['d']):
      np.testing.assert_array_equal(np.asarray(tree).reshape(2, -1)[:, 0], [0.0, 1.0])
  decay = _config(**{'early_stop.action': 'decay', 'early_stop.decay_factor': 0.5})
  scaled = jax.vmap(lambda o, u: early_stop.apply_to_step(decay, o, None, u))(
      old, {'w': jnp.ones((2, 3))}
  )
  np.testing.assert_array_equal(scaled['w'][:, 0], [0.5, 1.0])


# Seeds 0 and 1 of this config fire at different epochs (measured: 2 and 3; which seed fires
# first changes with the replica implementation's round-off, since the volatility crosses rho
# near the threshold, so the test takes the order from the run).
REPLICAS = {'replicas': 2, 'dynamics.convergence_rho': 0.3, 'early_stop.min_epochs': 0}


def _eval(folder, key='eval/loss'):
  with open(os.path.join(folder, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {int(r['epoch']): r[key] for r in rows if 'epoch' in r}


def test_with_replicas_a_stopped_replica_freezes_and_the_others_train_on(tmp_path):
  folder = str(tmp_path / 'packed')
  result = loop.train_and_evaluate(_config(**REPLICAS), folder)
  summary = _summary(folder)
  stops = summary['stop_epochs']
  assert sorted(stops) == [2, 3]
  assert result['finished'] and result['final_step'] == 3 * SPE  # ends when both stopped
  early, late = int(np.argmin(stops)), int(np.argmax(stops))
  first, second = (replicas.replica_dir(folder, k) for k in (early, late))
  assert _summary(first)['stop_epoch'] == 2 and _summary(second)['stop_epoch'] == 3
  # The early replica is frozen in epoch 3: the same weights give the same test loss; the
  # other trained on.
  assert _eval(first)[3] == _eval(first)[2]
  assert _eval(second)[3] != _eval(second)[2]
  # Killed in epoch 3 (one replica frozen, the other training) and resumed: the same stops and
  # the same numbers (the same program: bitwise).
  other = str(tmp_path / 'resumed')
  assert not loop.train_and_evaluate(_config(**REPLICAS), other, stop_after=2 * SPE + 4)['finished']
  loop.train_and_evaluate(_config(**REPLICAS), other)
  assert _summary(other)['stop_epochs'] == stops
  for k in range(2):
    assert _eval(replicas.replica_dir(other, k)) == _eval(replicas.replica_dir(folder, k))


def test_min_epochs_later_than_the_run_never_stops(tmp_path):
  result = loop.train_and_evaluate(
      _config(**{'early_stop.min_epochs': 9, 'num_epochs': 2}), str(tmp_path / 'run')
  )
  assert result['final_step'] == 2 * SPE
  assert _summary(str(tmp_path / 'run'))['stopped_early'] is False


@pytest.mark.parametrize(
    'fields, named',
    [
        ({'early_stop.signal': 'loss'}, 'early_stop.signal'),
        ({'early_stop.action': 'halt'}, 'early_stop.action'),
        ({'early_stop.min_epochs': -1}, 'early_stop.min_epochs'),
        ({'early_stop.action': 'decay', 'early_stop.decay_factor': 1.5}, 'early_stop.decay_factor'),
        ({'dynamics.step_mode': False}, 'dynamics.step_mode'),
        ({'dynamics.enabled': False}, 'dynamics.enabled'),
    ],
)
def test_bad_early_stop_fields_are_named(fields, named):
  with pytest.raises(ValueError, match=named.replace('.', r'\.')):
    validate.validate_config(_config(**fields), 1)
