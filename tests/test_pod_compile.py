"""benchmarks/pod_compile.py on a small TPU topology (v5e:2x2) with the tiny config: the
project's own train step, built by training.loop.build as train.py builds it, compiled by the
TPU compiler on this CPU. Needs libtpu (requirements-tpu.txt); skipped without it."""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

if importlib.util.find_spec('libtpu') is None:
  pytest.skip(
      'libtpu is not installed (pip install -r requirements-tpu.txt): no TPU compiler to run',
      allow_module_level=True,
  )

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import pod_compile  # noqa: E402


@pytest.fixture(scope='module')
def tiny_v5e():
  config, meta = pod_compile._tiny()
  devices = pod_compile.topology_devices('v5e:2x2')
  return config, meta, devices


def test_topology_has_the_pods_devices_not_this_hosts(tiny_v5e):
  _, _, devices = tiny_v5e
  assert len(devices) == 4 and {d.device_kind for d in devices} == {'TPU v5 lite'}
  assert jax.devices()[0].platform == 'cpu'


def test_tiny_train_step_compiles_for_v5e_2x2_with_its_shardings(tiny_v5e):
  config, meta, devices = tiny_v5e
  out = pod_compile.compile_experiment(config, meta, devices, programs=('train',))
  assert out['devices'] == 4 and out['mesh'] == {'data': 4} and out['chip'] == 'v5e'
  train = out['train']
  # The state is replicated and donated: every device holds all of it, as argument and
  # aliased output; the batch is split four ways.
  from models import get  # pylint: disable=import-outside-toplevel

  model = get(config.model, meta['num_classes'])
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  )['params']
  param_bytes = sum(4 * int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert train['argument_bytes'] > 2 * param_bytes  # params + SGD momentum at least
  assert train['alias_bytes'] > 0
  assert 0 < train['peak_bytes'] < 16 * 2**30 and 0 < train['hbm_fraction'] < 1
  assert train['flops'] > 0 and train['bytes_accessed'] > 0 and train['optimal_seconds'] > 0


def test_table_states_the_numbers_of_a_result():
  fake = dict(
      what='x',
      topology='v5e:2x2',
      global_batch=32,
      images_per_second=1000.0,
      mfu=0.5,
      tracker_share=dict(flops=0.01, bytes_accessed=0.02, peak_bytes=0.03, optimal_seconds=0.04),
      replica_speedup=5.0,
      tracker_on=dict(
          devices=4,
          train=dict(
              peak_bytes=2**30,
              hbm_fraction=1 / 16,
              flops=2e12,
              bytes_accessed=3e9,
              optimal_seconds=0.032,
          ),
      ),
  )
  text = pod_compile.table({'s': fake})
  assert '| s | v5e:2x2 (4 dev) | train | 1.00 (6%) | 2.000 | 3.00 | 32.00 | 1,000 | 50% |' in text
  assert '| s | +1.00% | +2.00% | +3.00% | +4.00% | 5.00x |' in text
