"""End-to-end training: loss falls, resume is exact, devices agree, configs are checked."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import tiny
from training import loop, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [(r['step'], r['train/loss']) for r in records if 'train/loss' in r]


def test_tiny_resnet_learns_synthetic_data(tmp_path):
  config = tiny.get_config()
  config.num_epochs = 6  # 48 steps
  config.dynamics.enabled = False
  result = loop.train_and_evaluate(config, str(tmp_path))
  losses = _losses(str(tmp_path))
  first, last = losses[0][1], np.mean([l for _, l in losses[-3:]])
  chance = np.log(config.data.num_classes)
  # The first logged interval starts near chance; after 48 steps the loss must have dropped
  # by a clear fraction of it, and the test accuracy must beat chance by a wide margin.
  assert first > 0.8 * chance
  assert last < first - 0.3 * chance, losses
  assert result['eval_accuracy'] > 100.0 / config.data.num_classes + 25.0
  for name in ('metrics.jsonl', 'config.json', 'checkpoints'):
    assert os.path.exists(tmp_path / name)
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


def test_resume_matches_uninterrupted_run(tmp_path):
  config = tiny.get_config()
  config.num_train_steps = 20
  config.checkpoint_every_steps = 5
  # A step ring as short as the window (10 here): it wraps, and the series leave it through
  # dynamics_steps.f32, which the resume cuts back to the checkpoint and refills.
  config.dynamics.recent_steps = 10
  straight = loop.train_and_evaluate(config, str(tmp_path / 'straight'))
  loop.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_after=11)
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['final_step'] == straight['final_step'] == 20
  a, b = straight['state'], resumed['state']
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  for key in a.dynamics:
    np.testing.assert_allclose(a.dynamics[key], b.dynamics[key], rtol=1e-6, atol=1e-6, err_msg=key)
  logged_straight = np.asarray(_losses(str(tmp_path / 'straight')))
  logged_resumed = np.asarray(_losses(str(tmp_path / 'resumed')))
  np.testing.assert_array_equal(logged_straight[:, 0], logged_resumed[:, 0])
  np.testing.assert_allclose(logged_straight[:, 1], logged_resumed[:, 1], rtol=1e-6)
  straight_npz = np.load(tmp_path / 'straight' / 'dynamics.npz')
  resumed_npz = np.load(tmp_path / 'resumed' / 'dynamics.npz')
  assert straight_npz['step_signals'].shape[-1] == 20
  assert np.isfinite(straight_npz['step_dsi']).sum() > 0
  for key in straight_npz:
    if key.startswith('step_'):
      np.testing.assert_allclose(
          straight_npz[key], resumed_npz[key], rtol=1e-6, atol=1e-6, err_msg=key
      )


def test_four_devices_match_one(tmp_path):
  script = textwrap.dedent(f"""
      import os, sys, json
      sys.path.insert(0, {ROOT!r})
      import jax
      from configs import tiny
      from training import loop
      config = tiny.get_config()
      config.num_train_steps = 4
      config.log_every_steps = 1
      config.dynamics.probe_mode = False
      loop.train_and_evaluate(config, sys.argv[1])
      print(jax.device_count())
  """)
  losses = {}
  for devices in (1, 4):
    env = dict(
        os.environ,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
        JAX_PLATFORMS='cpu',
    )
    workdir = str(tmp_path / f'd{devices}')
    out = subprocess.run(
        [sys.executable, '-c', script, workdir],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(devices)
    losses[devices] = [l for _, l in _losses(workdir)]
  assert len(losses[1]) == 4
  np.testing.assert_allclose(losses[4], losses[1], rtol=2e-4)


@pytest.mark.parametrize(
    'field,value,devices,match',
    [
        ('model', 'resnet1000', 1, 'model'),
        ('data.source', 'ftp', 1, 'data.source'),
        ('data.name', 'mnist', 1, 'data.name'),
        ('batch_size', 30, 4, 'batch_size'),
        ('eval_batch_size', 10, 4, 'eval_batch_size'),
        ('optimizer', 'lion', 1, 'optimizer'),
        ('learning_rate', -0.1, 1, 'learning_rate'),
        ('dynamics.window', 8, 1, 'dynamics.window'),
        ('dynamics.dfa_scales', '4,8,64', 1, 'dynamics.dfa_scales'),  # 64 > the window of 16
        ('dynamics.reduction', 'median', 1, 'dynamics.reduction'),
        ('dynamics.probe_size', 30, 4, 'dynamics.probe_size'),
    ],
)
def test_bad_config_names_the_field(field, value, devices, match):
  config = tiny.get_config()
  if field == 'data.name':
    config.data.source = 'tfds'
  if field == 'dynamics.dfa_scales':
    config.dynamics.window = 16  # explicit: an auto window is sized later, by fit_to_run
  node = config
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=match.replace('.', r'\.')):
    validate.validate_config(config, num_devices=devices)
