"""benchmarks/pod_compile.py on a small TPU topology (v5e:2x2) with the tiny config: the
project's own train step, built by training.programs.build as train.py builds it, compiled by the
TPU compiler on this CPU. Needs libtpu (requirements-tpu.txt); skipped without it."""

import importlib.util
import json
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
  assert train['estimated_cycles'] > 0  # the compiler's cost model, read from the HLO


def _analysis(flops, gb, peak_gib, temp_gib=0.5, cycles=0):
  return dict(
      flops=flops,
      bytes_accessed=gb * 1e9,
      peak_bytes=peak_gib * 2**30,
      temp_bytes=temp_gib * 2**30,
      hbm_fraction=peak_gib / 16,
      optimal_seconds=-3.0,
      estimated_cycles=cycles,
  )


def test_derived_figures_and_table_from_raw_analyses():
  v5e = pod_compile.CHIP_BY_NAME['v5e']
  # 8.19 GB at 819 GB/s: a 10 ms memory-bound step; its 0.197 TFLOP would take 1 ms.
  on = dict(chip='v5e', devices=4, train=_analysis(0.197e12, 8.19, 1.0, cycles=2_000_000))
  off = dict(chip='v5e', devices=4, train=_analysis(0.19503e12, 8.10, 0.99, 0.48, 1_980_000))
  single = dict(chip='v5e', devices=1, train=_analysis(0.197e12 / 8, 8.19 / 4, 0.25, 0, 1e6))
  r = dict(
      what='x',
      topology='v5e:2x2',
      global_batch=32,
      replicas=8,
      tracker_on=on,
      tracker_off=off,
      single_replica=single,
  )
  pod_compile.derive(r)
  t = on['train']['roofline_seconds']
  assert t == pytest.approx(8.19e9 / v5e['hbm_bandwidth']) == pytest.approx(0.01)
  assert r['images_per_second'] == pytest.approx(8 * 32 / 0.01)
  assert r['mfu'] == pytest.approx(0.1)
  assert r['tracker_share']['flops'] == pytest.approx(0.197 / 0.19503 - 1)
  assert 'optimal_seconds' not in r['tracker_share']  # negative: not a time
  # 8 single steps of 2.5 ms against one 10 ms step of all 8.
  assert r['replica_speedup'] == pytest.approx(2.0)
  # The compiler's cycles: 8 steps of 1e6 against one of 2e6.
  assert r['replica_speedup_cycles'] == pytest.approx(4.0)
  assert r['tracker_share']['estimated_cycles'] == pytest.approx(2 / 1.98 - 1)
  text = pod_compile.table({'s': r})
  assert '| s | v5e:2x2 (4 devices) | train | 1.00 (6.2%) | 0.197 | 8.19 | 10.00 | ' in text
  assert '(-3,000: negative) | 25,600 | 10% |' in text
  assert '| s | 8 (vmap) | 2.00x | 4.00x | 1.000 | 0.500 | 1.00 / 0.25 |' in text
  assert f'| {100 * (2 / 1.98 - 1):+.2f}% |' in text
  # A 'map' program's flops and bytes are one trip's (XLA counts a loop body once): no
  # roofline figure of the N replicas; the cycles still give the speedup.
  r['replica_impl'] = 'map'
  pod_compile.derive(r)
  assert r['replica_speedup'] is None and r['images_per_second'] is None and r['mfu'] is None
  assert r['replica_speedup_cycles'] == pytest.approx(4.0)
  text = pod_compile.table({'s': r})
  assert '| s | 8 (map) | n/a | 4.00x | n/a | n/a | 1.00 / 0.25 |' in text
  assert '| 0.197 (one trip) | 8.19 (one trip) | 10.00 (one trip) |' in text
  assert '| n/a | n/a |' in text


def test_step_input_bench_shows_the_tpu_loop_and_copy_that_the_defaults_avoid(tmp_path):
  import bench_step_input  # pylint: disable=import-outside-toplevel

  out = tmp_path / 'input.json'
  bench_step_input.main(
      ['--batch=8', '--train_size=512', '--rounds=1', '--iters=1', f'--out={out}']
  )
  result = json.loads(out.read_text())
  crop, gather = result['crop']['tpu_v5e'], result['train_set_gather']['tpu_v5e']
  # The TPU runs the vmapped dynamic_slice as a loop; the selects it runs without one.
  assert crop['gather']['has_loop'] and not crop['selects']['has_loop']
  assert crop['gather']['estimated_cycles'] > crop['selects']['estimated_cycles'] > 0
  # Gathering from u8[n, H, W, 3] copies the whole set; from flat rows it does not.
  assert gather['nhwc']['copies_train_set'] and not gather['flat_rows']['copies_train_set']
  assert gather['nhwc']['estimated_cycles'] > gather['flat_rows']['estimated_cycles'] > 0
  assert all(s > 0 for s in result['crop']['host_seconds'].values())


def test_replica_speedups_by_cycles_and_roofline():
  import bench_replicas_tpu  # pylint: disable=import-outside-toplevel

  single = dict(replicas=1, impl='single', estimated_cycles=100, convolution_cycles=60)
  single.update(flops=1e9, bytes_accessed=1e9, roofline_seconds=2e-3, compile_seconds=1)
  vmap = dict(single, replicas=8, impl='vmap', estimated_cycles=400, roofline_seconds=16e-3)
  (row,) = bench_replicas_tpu.speedups(single, [vmap])
  assert row['speedup_cycles'] == pytest.approx(2.0)  # 8 x 100 / 400
  assert row['speedup_roofline'] == pytest.approx(1.0)
  assert '| vmap, N = 8 | 0.00 |' in bench_replicas_tpu.table(single, [row])
  assert '2.00x / 1.00x' in bench_replicas_tpu.table(single, [row])
