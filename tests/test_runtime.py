"""training/runtime.py: the XLA:CPU flags it adds, and that they leave the numbers unchanged."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from training import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_adds_flags_and_keeps_the_users():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  added = runtime.configure_xla_cpu(env)
  assert added and all(flag in env['XLA_FLAGS'] for flag in added)
  assert env['XLA_FLAGS'].startswith('--xla_force_host_platform_device_count=2 ')
  assert runtime.configure_xla_cpu(env) == []  # idempotent

  name = next(iter(runtime.CPU_FLAGS))
  mine = {'XLA_FLAGS': f'--{name}=dot'}
  runtime.configure_xla_cpu(mine)
  assert mine['XLA_FLAGS'] == f'--{name}=dot'  # the user's value wins

  off = {runtime.OPT_OUT: '0'}
  assert runtime.configure_xla_cpu(off) == [] and 'XLA_FLAGS' not in off


def test_flags_follow_the_model_family():
  ynn = runtime.YNN_FUSION
  assert runtime.cpu_flags()[ynn] == runtime.cpu_flags('resnet50')[ynn] == 'dot,eltwise,reduce'
  for model in ('vgg16', 'densenet121_tiny', 'mobilenetv2'):
    assert runtime.cpu_flags(model)[ynn] == 'dot,reduce', model
  env = {}
  runtime.configure_xla_cpu(env, model='densenet121')
  assert env['XLA_FLAGS'] == f'--{ynn}=dot,reduce'


def test_refuses_to_come_after_the_backend_started():
  import jax

  jax.numpy.zeros(()).block_until_ready()  # the backend is up (conftest set the flags before)
  saved = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = ''
  try:
    with pytest.raises(RuntimeError, match='before the first JAX computation'):
      runtime.configure_xla_cpu(model='vgg16')
  finally:
    if saved is None:
      os.environ.pop('XLA_FLAGS')
    else:
      os.environ['XLA_FLAGS'] = saved


_STEPS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from training import runtime
runtime.configure_xla_cpu()
import jax, jax.numpy as jnp, numpy as np
from configs import tiny
from training import programs
config = tiny.get_config()
config.batch_size = 32
exp = programs.build(config, 4, (32, 32, 3), jnp.full(3, 120.0), jnp.full(3, 64.0),
                 steps_per_epoch=8, total_steps=8, mesh=programs.make_mesh())
state = exp.init_state(0)
rng = np.random.default_rng(0)
losses = []
for _ in range(4):
  images = jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 4, (32,)), jnp.int32)
  state, m = exp.train_step(state, images, labels)
  losses.append(float(m['train/loss']))
print(json.dumps(losses))
"""


def _losses(tuned: bool, xla_flags=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  env[runtime.OPT_OUT] = '1' if tuned else '0'
  out = subprocess.run(
      [sys.executable, '-c', _STEPS, ROOT], env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_steps_match_untuned():
  untuned = _losses(False)
  # Four SGD steps: the flags change the order of float32 sums, nothing else. Both settings
  # that training/runtime.py picks between (ResNets; VGG, DenseNet, MobileNetV2) are checked.
  # Each step amplifies the round-off of the one before: with dot,reduce the losses differ by
  # 0 at step 2, 4e-6 at step 3 and 3e-4 at step 4, so there step 4 gets a looser bound.
  for family, last_rtol in (('resnet18', 1e-4), ('densenet121', 2e-3)):
    ynn = runtime.cpu_flags(family)[runtime.YNN_FUSION]
    tuned = _losses(True, f'--{runtime.YNN_FUSION}={ynn}')
    np.testing.assert_allclose(tuned[:3], untuned[:3], rtol=1e-4, err_msg=ynn)
    np.testing.assert_allclose(tuned[3], untuned[3], rtol=last_rtol, err_msg=ynn)
  assert untuned[0] != untuned[-1]
