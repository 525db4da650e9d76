"""Several seeds in one compiled program: `config.replicas = N > 1`.

Replica k is the run with seed `config.seed + k`: its own initialisation, data order
(data.batching.epoch_permutation(seed + k, epoch)) and augmentation keys (folded from its own
base key and the step), exactly as a 1-replica run with that seed would draw them. The train
state stays a plain pytree (a training.steps.TrainState): every leaf but `step` gains a
leading replica axis [N, ...]; `step` stays a scalar, shared by all replicas, so checkpoints
and the loop's bookkeeping are those of one run.

The step runs the single-seed step (training.steps.train_step, unchanged) over the replica
axis, in one of three ways (`config.replica_impl`):

- 'vmap': jax.vmap; each convolution becomes one grouped/batched convolution;
- 'unroll': the single-seed step written out N times in the one program (the same
  convolutions as a single run, N times the program to compile);
- 'map': jax.lax.map, a while loop over the replicas (the program of one replica). XLA:CPU
  runs convolutions inside a loop body far slower than outside one (jax-ml/jax#12868: 26x
  for a conv's gradient here), so 'map' is for accelerators whose compile time matters.
On a mesh whose 'replica' axis spans R > 1 devices, 'unroll' and 'map' split the replicas into
R groups: vmap over the groups (one per device), unrolled or mapped within.

'auto' picks per backend what was measured (CPU) or estimated (TPU) faster (AUTO_IMPL).

Data: the uint8 training set lives on the devices (replicated, CIFAR-10 is 150 MB) and each
replica's batch is gathered inside the step from the int32 indices [N, B] the host computes
(from the cached epoch permutations), so the host never assembles N image batches per step.

Devices: a ('replica', 'data') mesh of R x D devices (R = config.replica_devices, or
gcd(N, device count) when 0). The replica axis of the state is sharded over 'replica', the
batch axis over 'data'.
"""

import math
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

REPLICA_AXIS, DATA_AXIS = 'replica', 'data'
IMPLS = ('auto', 'vmap', 'unroll', 'map')
# What 'auto' means per backend. CPU: the replicas written out in the program, which keeps
# the convolutions of a single run (XLA:CPU lowers vmapped convolutions to grouped ones, and
# runs convolutions inside loop bodies slowly); benchmarks/bench_replicas.py, docs/replicas.md
# "Speed". TPU: the loop, which the TPU compiler's cost model puts at 0.78x the speed of N
# separate steps against vmap's 0.63x for the study's ResNet-18 on one v5e chip, with one
# replica's memory and compile time (benchmarks/bench_replicas_tpu.py; no TPU has run it).
# Other accelerators (GPU, unmeasured): vmap, one wide op per layer.
AUTO_IMPL = {'cpu': 'unroll', 'tpu': 'map'}
DEFAULT_ACCELERATOR_IMPL = 'vmap'
# The marker a replica's config.json carries, so that train.py refuses to train into it.
MARKER = 'replica_of'


def replica_dir(workdir: str, k: int) -> str:
  return os.path.join(workdir, f'replica_{k}')


def resolve_impl(config, backend: str = None) -> str:
  impl = config.replica_impl
  if impl != 'auto':
    return impl
  return AUTO_IMPL.get(backend or jax.default_backend(), DEFAULT_ACCELERATOR_IMPL)


def mesh_shape(replicas: int, replica_devices: int, num_devices: int) -> Tuple[int, int]:
  """(R, D): devices along 'replica' and along 'data', R * D = num_devices."""
  r = replica_devices or math.gcd(replicas, num_devices)
  if r < 1 or num_devices % r or replicas % r:
    raise ValueError(
        f'replica_devices={replica_devices} does not fit replicas={replicas} on {num_devices} '
        f'device(s): the replicas are spread evenly over replica_devices devices, so it must '
        f'divide both replicas and the device count. Use 0 (gcd(replicas, devices) = '
        f'{math.gcd(replicas, num_devices)}) or a common divisor.'
    )
  return r, num_devices // r


def validate(config, num_devices: int):
  """The replica fields, each error naming its field (called from train_and_evaluate)."""
  n = config.replicas
  if not isinstance(n, int) or n < 1:
    raise ValueError(
        f'replicas={n!r} must be an integer >= 1 (1 is an ordinary run; N > 1 '
        'trains seeds seed .. seed + N - 1 together).'
    )
  if config.replica_impl not in IMPLS:
    raise ValueError(f'replica_impl={config.replica_impl!r}; allowed: {", ".join(IMPLS)}.')
  if config.replica_devices < 0:
    raise ValueError(f'replica_devices={config.replica_devices} must be >= 0 (0: automatic).')
  if n == 1:
    if config.replica_devices > 1:
      raise ValueError(
          f'replica_devices={config.replica_devices} needs replicas > 1 '
          '(replicas=1); set replica_devices=0.'
      )
    return
  r, d = mesh_shape(n, config.replica_devices, num_devices)
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % d:
      raise ValueError(
          f'{field}={config[field]} must be a multiple of the {d} device(s) '
          f'along the data axis ({num_devices} devices / replica_devices={r}).'
      )
  if config.dynamics.enabled and config.dynamics.probe_mode and config.dynamics.probe_size % d:
    raise ValueError(
        f'dynamics.probe_size={config.dynamics.probe_size} must be a multiple '
        f'of the {d} device(s) along the data axis.'
    )


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  r, d = mesh_shape(config.replicas, config.replica_devices, len(devices))
  return jax.make_mesh(
      (r, d),
      (REPLICA_AXIS, DATA_AXIS),
      devices=devices,
      axis_types=(jax.sharding.AxisType.Auto,) * 2,
  )


# ----------------------------------------------------------------------------------------------
# The stacked state


def stack(states: Sequence[Any]):
  """N single-replica TrainStates -> one with a leading replica axis on every leaf but step."""
  step = states[0].step
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[s.replace(step=None) for s in states])
  return stacked.replace(step=step)


def take(tree, k: int):
  """Replica k of a stacked tree (host or device arrays); a TrainState keeps its step."""
  if hasattr(tree, 'replace') and hasattr(tree, 'step'):
    return jax.tree.map(lambda x: x[k], tree.replace(step=None)).replace(step=tree.step)
  return jax.tree.map(lambda x: x[k], tree)


def state_sharding(state, mesh):
  """The shardings of a stacked state: step replicated, the rest split over 'replica'."""
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(REPLICA_AXIS))
  return jax.tree.map(lambda _: split, state.replace(step=None)).replace(step=replicated)


def num_replicas_in(tree) -> int:
  """The leading replica count of a stacked state dict from a checkpoint (1 if unstacked).

  The base RNG is a raw uint32[2] key in a single run and [N, 2] in an N-replica one.
  """
  rng = tree['rng']
  shape = getattr(rng, 'shape', None)
  return int(shape[0]) if shape is not None and len(shape) == 2 else 1


# ----------------------------------------------------------------------------------------------
# Mapping a single-replica function over the replica axis


def map_replicas(fn: Callable, impl: str, groups: int = 1) -> Callable:
  """fn(*xs) on one replica -> g(*xs) on the stacked xs (every leaf with leading axis N).

  impl 'vmap': jax.vmap(fn). 'unroll': fn applied to each replica in turn, written out in
  the program, the outputs stacked. 'map': jax.lax.map over the replicas. With groups > 1 (the
  devices along 'replica') the N replicas are reshaped to [groups, N / groups], vmapped over
  the groups (each group on its own device) and unrolled or mapped within them.
  """
  if impl == 'vmap':
    return jax.vmap(fn)
  if impl == 'unroll':

    def looped(*xs):
      n = jax.tree.leaves(xs)[0].shape[0]
      outs = [fn(*jax.tree.map(lambda x: x[k], xs)) for k in range(n)]
      return jax.tree.map(lambda *ys: jnp.stack(ys), *outs)

  elif impl == 'map':

    def looped(*xs):
      return jax.lax.map(lambda x: fn(*x), xs)

  else:
    raise ValueError(f'replica_impl={impl!r}; allowed: vmap, unroll, map.')

  if groups == 1:
    return looped

  def grouped(*xs):
    split = jax.tree.map(lambda x: x.reshape((groups, -1) + x.shape[1:]), xs)
    out = jax.vmap(looped)(*split)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

  return grouped


def resident_images(images: np.ndarray) -> np.ndarray:
  """u8[n, H, W, 3] -> u8[n, H * W * 3]: the training set as the replicas' step takes it, one
  flat row per image. A TPU stores a [..., W, 3] array with its 3 channels padded to a lane
  tile, and gathering a batch from it re-lays out the whole set every step (7.67 M estimated
  cycles for CIFAR-10's 50,000 images on a v5e, more than a ResNet-18 step); from flat rows
  the gather is 0.01 M (benchmarks/bench_step_input.py; benchmarks/README.md, "The step's
  input on TPU")."""
  return np.asarray(images).reshape(len(images), -1)


def train_step(state, indices, images, labels, *, single_step, impl: str, groups: int, image_shape):
  """The N-replica train step.

  state: stacked TrainState; indices: i32[N, B], replica k's batch of this step (rows of the
  training set); images: u8[n, H * W * 3] (`resident_images`), labels: i32[n], the whole
  training set (device resident); image_shape: (H, W, 3), its images' shape.
  single_step: (TrainState, u8[B, H, W, 3], i32[B]) -> (TrainState, metrics).
  Returns the stacked new state and metrics {name: [N]}.
  """
  step = state.step
  image_shape = tuple(image_shape)

  def one(rest, idx):
    batch = images[idx].reshape(idx.shape + image_shape)
    new, metrics = single_step(rest.replace(step=step), batch, labels[idx])
    return new.replace(step=None), metrics

  rest, metrics = map_replicas(one, impl, groups)(state.replace(step=None), indices)
  return rest.replace(step=step + 1), metrics


def shared_input_step(fn: Callable, impl: str, groups: int) -> Callable:
  """fn(state, *batch) on one replica -> g(stacked state, *batch), the batch shared by all
  replicas (evaluation, probe): outputs gain a leading [N]."""

  def stepped(state, *batch):
    step = state.step

    def one(rest):
      return fn(rest.replace(step=step), *batch)

    return map_replicas(one, impl, groups)(state.replace(step=None))

  return stepped


def per_replica_input_step(fn: Callable, impl: str, groups: int) -> Callable:
  """fn(state, batch) on one replica -> g(stacked state, batches [N, ...]): each replica its
  own batch (the probe batch, which a run draws from its seed)."""

  def stepped(state, batches):
    step = state.step

    def one(rest, batch):
      return fn(rest.replace(step=step), batch)

    return map_replicas(one, impl, groups)(state.replace(step=None), batches)

  return stepped


def probe_update(tracker, dynamics: Dict[str, Any], signals) -> Dict[str, Any]:
  """tracker.probe_update on every replica at once: dynamics stacked [N, ...], signals
  f32[N, S]. The probe count is the same for all replicas (they end their epochs together),
  so it is taken out of the vmap and stays a concrete number, which probe_update reads on
  the host to pick its compiled history length."""
  count = dynamics['probe_count'][0]
  rest = {k: v for k, v in dynamics.items() if k != 'probe_count'}
  return jax.vmap(lambda r, s: tracker.probe_update(dict(r, probe_count=count), s))(rest, signals)


def train_indices(batches: Sequence[Any], step: int) -> np.ndarray:
  """i32[N, B]: replica k's rows at global step `step` (batches[k]: a TrainBatches)."""
  return np.stack([b.indices(step) for b in batches]).astype(np.int32)


def replica_config(config, k: int) -> Dict[str, Any]:
  """Replica k's config.json: the 1-replica run it equals (seed + k), plus a marker."""
  import json  # pylint: disable=g-import-not-at-top

  saved = json.loads(config.to_json_best_effort(sort_keys=True))
  saved.update(seed=config.seed + k, replicas=1, replica_devices=0)
  saved[MARKER] = {'replica': k, 'replicas': config.replicas, 'base_seed': config.seed}
  return saved


def check_not_replica(saved: Dict[str, Any], workdir: str):
  """Refuses to train into a replica's folder of a replicated run."""
  if MARKER in saved:
    marker = saved[MARKER]
    raise ValueError(
        f'{workdir} is replica {marker.get("replica")} of the {marker.get("replicas")}-replica '
        f'run in {os.path.dirname(os.path.abspath(workdir))} (seed {saved.get("seed")}); its '
        'checkpoints live in that run. Resume the whole run with --workdir='
        f'{os.path.dirname(os.path.abspath(workdir))}, or train seed {saved.get("seed")} alone '
        'in a new --workdir.'
    )


def replica_summaries(values: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Mean, sample std and n over replicas of every numeric summary field (for logging)."""
  out = {}
  for key in values[0]:
    v = np.asarray([x[key] for x in values if x.get(key) is not None], np.float64)
    if v.size and v.dtype.kind == 'f':
      out[key] = (
          float(v.mean()),
          float(v.std(ddof=1)) if v.size > 1 else float('nan'),
          int(v.size),
      )
  return out
