"""Seeds in one program (config.replicas = N): replica k equals the 1-replica run with seed + k.

The reference runs are ordinary single-seed runs of the same config; nothing of the replica
code runs in them. Replicas and references are different XLA programs (the replica step maps
the same step over a leading axis), so they agree to float32 round-off, not bitwise; the
tolerances below are a few times the drift measured on this config (README, "Replicas").
A resumed replicated run runs the very program of the uninterrupted one, so that comparison
is bitwise (the helpers of test_reliability.py).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_reliability as rel

from configs import tiny
from training import loop, programs, replicas, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, N = 3, 2  # replicas train seeds 3 and 4: a bug using k instead of seed + k shows
# 4 steps per epoch, 3 epochs; the step window (10) fills at step 10, so step mode computes
# metrics at steps 10 to 12 and probe mode runs three times. Training amplifies round-off:
# at learning rate 0.01 this tiny model's replica and reference part by 2e-5 after 4 steps and
# by 1e-2 after 8; at 0.001 the losses stay within 5e-5 over the run, the gradient norms
# within 2e-3, the tap signals within 1e-3 and the window metrics (DFA alphas over 10 steps)
# within 1e-2 (measured, seed 4; the tolerances below are about twice that). A wrong seed,
# batch or key is off by percents from the first step.
OVERRIDES = {
    'num_train_steps': 12,
    'log_every_steps': 1,
    'checkpoint_every_steps': 4,
    'learning_rate': 0.001,
    'data.train_size': 128,
    'dynamics.window': 10,
}


def _config(**fields):
  config = tiny.get_config()
  for key, value in {**OVERRIDES, **fields}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _records(folder):
  with open(os.path.join(folder, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _series(folder, key):
  """(steps, values) of `key` in metrics.jsonl."""
  rows = [(r['step'], r[key]) for r in _records(folder) if key in r]
  return [s for s, _ in rows], np.asarray([v for _, v in rows], np.float64)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An N-replica run and the N single-seed runs it must equal."""
  root = tmp_path_factory.mktemp('replicas')
  result = loop.train_and_evaluate(_config(seed=SEED, replicas=N), str(root / 'packed'))
  singles = [str(root / f'seed{SEED + k}') for k in range(N)]
  for k, folder in enumerate(singles):
    loop.train_and_evaluate(_config(seed=SEED + k), folder)
  return str(root / 'packed'), result, singles


def test_replica_k_equals_the_run_with_seed_plus_k(runs):
  packed, result, singles = runs
  assert result['finished'] and result['final_step'] == 12
  assert len(result['eval_accuracy']) == N
  for k, single in enumerate(singles):
    folder = replicas.replica_dir(packed, k)
    # Per-step training losses, accuracies and gradient norms.
    for key, rtol in (('train/loss', 2e-4), ('train/grad_norm', 1e-2)):
      steps_a, a = _series(single, key)
      steps_b, b = _series(folder, key)
      assert steps_a == steps_b == list(range(1, 13)), key
      np.testing.assert_allclose(b, a, rtol=rtol, err_msg=f'replica {k}: {key}')
    # Test accuracy after every epoch: the same predictions.
    for key in ('eval/accuracy', 'eval/loss'):
      np.testing.assert_allclose(
          _series(folder, key)[1], _series(single, key)[1], rtol=5e-5, err_msg=f'replica {k}: {key}'
      )
    # The dynamics series: the tap signals of every step and of every probe, and the metrics.
    with (
        np.load(os.path.join(single, 'dynamics.npz')) as a,
        np.load(os.path.join(folder, 'dynamics.npz')) as b,
    ):
      assert sorted(a.files) == sorted(b.files)
      for key in a.files:
        if a[key].dtype.kind in 'fc':
          # The tap signals to 1e-3; the window metrics (DFA over 10 samples) amplify it.
          # (measured up to 4.2% on the last step's DSI volatility, on a loaded machine).
          tol = 1e-3 if key.endswith('signals') else 6e-2
          # A surrogate p counts the null draws at or above the value (steps of 1/40): a
          # round-off-sized change of the value can move a few draws across it.
          atol = 4 / 40 if key.endswith('_p') else 1e-4
          if key.endswith('_z'):
            # z divides by the spread of 39 surrogates of 10 (step) or 3 (probe) samples,
            # which amplifies the signals' round-off: measured 0.011 (step), 0.17 (probe).
            atol = 0.25 if key.startswith('probe_') else 0.05
          want, got = a[key], b[key]
          if key in ('probe_metastability_z', 'probe_metastability_p'):
            # Where R(t) is constant in exact arithmetic (a 3-sample history), metastability
            # is round-off (~1e-17) and its nulls tie with it: z and p are ratios of round-off
            # there (the value itself is compared above and below like every other).
            defined = ~(np.abs(a['probe_metastability']) < 1e-6)
            want, got = want[defined], got[defined]
          np.testing.assert_allclose(got, want, rtol=tol, atol=atol, err_msg=f'replica {k}: {key}')
          assert np.array_equal(np.isnan(a[key]), np.isnan(b[key])), key
        else:
          np.testing.assert_array_equal(b[key], a[key], err_msg=f'replica {k}: {key}')
      assert np.isfinite(a['step_dsi']).sum() >= 3 and int(a['probe_count']) == 3
    with open(os.path.join(folder, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(single, 'summary.json')) as f:
      reference = json.load(f)
    assert summary['seed'] == SEED + k and summary['finished']
    np.testing.assert_allclose(summary['eval_accuracy'], reference['eval_accuracy'], rtol=1e-6)
    # Each replica reads like its run: config (seed + k) and TensorBoard events.
    with open(os.path.join(folder, 'config.json')) as f:
      saved = json.load(f)
    assert saved['seed'] == SEED + k and saved['replicas'] == 1
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(folder))
  # The replicas differ from each other (different seeds, not copies of one).
  losses = [_series(replicas.replica_dir(packed, k), 'train/loss')[1] for k in range(N)]
  assert np.abs(losses[0] - losses[1]).max() > 1e-3
  # The workdir: one stacked checkpoint, no records of its own.
  assert not os.path.exists(os.path.join(packed, 'metrics.jsonl'))
  state = rel._read_checkpoint(packed, 12)
  assert np.asarray(state['rng']).shape == (N, 2) and np.asarray(state['step']).shape == ()


def test_vmap_unroll_and_map_steps_equal_single_steps():
  """The step itself, every implementation, against N single-seed steps (3 steps)."""
  config = _config(replicas=N)
  mesh = programs.make_mesh()
  mean, std = jnp.full(3, 120.0), jnp.full(3, 64.0)
  single = programs.build(_config(), 4, (32, 32, 3), mean, std, 4, 12, mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, (64,)).astype(np.int32)
  indices = np.stack([rng.permutation(64)[:32] for _ in range(N)]).astype(np.int32)
  expected = []
  for k in range(N):
    state = single.init_state(SEED + k)
    losses = []
    for _ in range(3):
      state, m = single.train_step(state, images[indices[k]], labels[indices[k]])
      losses.append(float(m['train/loss']))
    expected.append((losses, jax.device_get(state.params)))
  for impl in ('vmap', 'unroll', 'map'):
    config.replica_impl = impl
    rmesh = replicas.make_mesh(config)
    exp = programs.build(config, 4, (32, 32, 3), mean, std, 4, 12, rmesh)
    state = jax.device_put(
        replicas.stack([exp.init_state(SEED + k) for k in range(N)]), exp.state_sharding
    )
    losses = []
    for _ in range(3):
      state, m = exp.train_step(state, indices, replicas.resident_images(images), labels)
      losses.append(np.asarray(m['train/loss']))
    assert exp.train_step._cache_size() == 1  # one compilation for all replicas and steps
    for k, (want, params) in enumerate(expected):
      np.testing.assert_allclose([l[k] for l in losses], want, rtol=2e-5, err_msg=impl)
      for a, b in zip(
          jax.tree.leaves(params), jax.tree.leaves(jax.device_get(replicas.take(state, k).params))
      ):
        # Parameters near zero (BatchNorm biases after 3 small steps, ~1e-4, updated by sums
        # that cancel) carry absolute round-off (measured 4e-6), not relative.
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=impl)


def test_kill_then_resume_is_exact_for_every_replica(runs, tmp_path):
  packed, result, _ = runs
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'train.log')
  overrides = dict(OVERRIDES, seed=SEED, replicas=N)
  proc = rel._start_train(workdir, log, overrides)
  rel._wait_for_checkpoint(workdir, proc, log, step=4)
  proc.kill()
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'summary.json')), 'killed too late'
  assert rel._committed_steps(workdir)[-1] < 12

  resumed = loop.train_and_evaluate(_config(seed=SEED, replicas=N), workdir)

  assert resumed['finished']
  for k in range(N):
    # State, every record and every dynamics series of each replica, bitwise.
    rel._assert_same_run(
        replicas.replica_dir(packed, k),
        result['state'],
        replicas.replica_dir(workdir, k),
        resumed['state'],
    )


def test_bad_replica_input_names_the_field(runs, tmp_path):
  packed, _, _ = runs
  for fields, pattern in [
      ({'replicas': 0}, r'replicas=0 must be an integer >= 1'),
      ({'replicas': 3, 'replica_devices': 2}, r'replica_devices=2'),
      ({'replicas': 2, 'replica_impl': 'pmap'}, r'replica_impl'),
      ({'replicas': 1, 'replica_devices': 2}, r'replica_devices=2'),
  ]:
    with pytest.raises(ValueError, match=pattern):
      loop.train_and_evaluate(_config(**fields), str(tmp_path / 'never'))
  assert not os.path.exists(tmp_path / 'never' / 'config.json')
  # Resumed with another N: the config differs in `replicas`.
  with pytest.raises(ValueError, match=r'replicas: 2 -> 3'):
    loop.train_and_evaluate(_config(seed=SEED, replicas=3), packed)
  # ... and with config.json gone, the checkpoint itself says how many replicas it holds.
  copy = str(tmp_path / 'copy')
  os.makedirs(copy)
  os.symlink(os.path.join(packed, 'checkpoints'), os.path.join(copy, 'checkpoints'))
  with pytest.raises(ValueError, match=r'2-replica state .* replicas=3 \(config field '):
    loop.train_and_evaluate(_config(seed=SEED, replicas=3), copy)
  with pytest.raises(ValueError, match=r'2-replica state .* replicas=1 \(config field '):
    loop.train_and_evaluate(_config(seed=SEED), copy)
  # A replica's folder is not a workdir of its own.
  with pytest.raises(ValueError, match=r'replica 1 of the 2-replica run'):
    loop.train_and_evaluate(_config(seed=SEED + 1), replicas.replica_dir(packed, 1))


def test_mesh_shape_and_errors():
  assert replicas.mesh_shape(4, 0, 4) == (4, 1)
  assert replicas.mesh_shape(2, 0, 4) == (2, 2)
  assert replicas.mesh_shape(3, 0, 4) == (1, 4)
  assert replicas.mesh_shape(4, 2, 8) == (2, 4)
  for args in ((3, 2, 4), (4, 3, 6), (2, 4, 2)):
    with pytest.raises(ValueError, match='replica_devices'):
      replicas.mesh_shape(*args)
  config = _config(replicas=2, replica_devices=2, batch_size=30)
  with pytest.raises(ValueError, match=r'batch_size=30 .* data axis'):
    replicas.validate(config, 8)


def test_replicas_over_two_devices_and_data_over_two_match_one_device(runs, tmp_path):
  packed, _, _ = runs
  script = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {ROOT!r})
      from training import runtime
      runtime.configure_xla_cpu()
      import jax
      from configs import tiny
      sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
      import test_replicas
      config = test_replicas._config(seed={SEED}, replicas={N}, replica_devices=2)
      from training import loop, replicas
      loop.train_and_evaluate(config, sys.argv[1], stop_after=4)
      print(jax.device_count(), dict(replicas.make_mesh(config).shape))
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  workdir = str(tmp_path / 'mesh')
  out = subprocess.run(
      [sys.executable, '-c', script, workdir], env=env, capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "4 {'replica': 2, 'data': 2}"
  for k in range(N):
    a = _series(replicas.replica_dir(packed, k), 'train/loss')[1][:4]
    b = _series(replicas.replica_dir(workdir, k), 'train/loss')[1]
    # The data axis sums BatchNorm statistics and gradients over two devices in another
    # order (as in test_train.test_four_devices_match_one).
    np.testing.assert_allclose(b, a, rtol=2e-4, err_msg=f'replica {k}')


def test_stack_take_and_checkpoint_replica_count():
  states = [
      steps.TrainState(
          step=jnp.zeros((), jnp.int32),
          params={'w': jnp.full(3, k)},
          batch_stats={},
          opt_state=(),
          rng=jnp.full(2, k, jnp.uint32),
          dynamics={},
      )
      for k in range(3)
  ]
  stacked = replicas.stack(states)
  assert stacked.step.shape == () and stacked.params['w'].shape == (3, 3)
  np.testing.assert_array_equal(replicas.take(stacked, 2).params['w'], [2, 2, 2])
  assert replicas.num_replicas_in({'rng': stacked.rng}) == 3
  assert replicas.num_replicas_in({'rng': states[0].rng}) == 1


def test_sweep_packs_consecutive_seeds_into_replicas(tmp_path):
  import sweep  # pylint: disable=g-import-not-at-top

  assert sweep.seed_groups([3, 0, 1, 2, 4], 2) == [(0, 2), (2, 2), (4, 1)]
  with pytest.raises(ValueError, match=r'consecutive .*replicas_per_run=2'):
    sweep.seed_groups([0, 2], 2)
  (job,) = sweep.plan(
      ['resnet18'], ['cifar10'], [0, 1, 2, 3], 'cpu', str(tmp_path), replicas_per_run=4
  )
  assert job.name == 'cifar10_resnet18_s0-3' and job.replicas == 4
  assert job.command[-1] == '--config.replicas=4' and 'seed=0' in job.command[2]
  singles = sweep.plan(['resnet18'], ['cifar10'], [0, 1], 'cpu', str(tmp_path))
  assert [j.name for j in singles] == ['cifar10_resnet18_s0', 'cifar10_resnet18_s1']
  assert not any('replicas' in a for j in singles for a in j.command)


def test_analysis_reads_each_replica_as_a_seed(runs, tmp_path):
  from analysis import report, runs as runs_lib  # pylint: disable=g-import-not-at-top

  packed, _, _ = runs
  found = runs_lib.find_runs([packed])
  assert found == [replicas.replica_dir(packed, k) for k in range(N)]
  assert runs_lib.find_runs([os.path.dirname(packed)])[:N] == found  # a directory of runs
  loaded = [runs_lib.load_run(f) for f in found]
  assert [r.seed for r in loaded] == [SEED, SEED + 1] and [r.replica for r in loaded] == [0, 1]
  assert loaded[1].name == 'packed/replica_1' and all(r.finished for r in loaded)
  # The study report: one row per replica, with its seed.
  text = open(report.build_report([packed], str(tmp_path / 'study'))).read()
  assert '| packed/replica_0 |' in text and '| packed/replica_1 |' in text
  # analyze.py --workdir: each replica's report, and the seeds with their spread.
  out = subprocess.run(
      [sys.executable, 'analyze.py', f'--workdir={packed}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  accuracies = [float(r.test_accuracy[-1]) for r in loaded]
  mean, std = np.mean(accuracies), np.std(accuracies, ddof=1)
  assert f'{mean:.3f} ± {std:.3f} (n=2)' in out.stdout, out.stdout
  for k in range(N):
    assert os.path.exists(os.path.join(replicas.replica_dir(packed, k), 'report.md'))
  assert os.path.exists(os.path.join(packed, 'plots', 'seeds.png'))
