"""Layer signals (DESIGN 3.1): reduce each tap's activation to a few numbers per sample.

`mean` and `rms` give one signal per tap; `proj:K` averages over batch and space and projects
the channel vector on K fixed random unit vectors (seeded, saved with the run), K per tap.
"""

from typing import Dict, List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np


def parse_reduction(reduction: str) -> Tuple[str, int]:
  """'mean' -> ('mean', 1); 'rms' -> ('rms', 1); 'proj:16' -> ('proj', 16)."""
  if reduction in ('mean', 'rms'):
    return reduction, 1
  kind, _, k = reduction.partition(':')
  if kind == 'proj' and k.isdigit() and int(k) > 0:
    return 'proj', int(k)
  raise ValueError(
      f'dynamics.reduction={reduction!r} is not one of mean, rms, proj:K ' '(K a positive integer).'
  )


def make_projections(channels: Sequence[int], k: int, seed: int) -> List[np.ndarray]:
  """One f32[K, C_l] matrix of unit rows per tap, a pure function of (seed, tap index)."""
  projections = []
  for index, c in enumerate(channels):
    p = np.random.default_rng([seed, index]).standard_normal((k, c))
    projections.append((p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32))
  return projections


def signal_names(tap_names: Sequence[str], reduction: str) -> List[str]:
  kind, k = parse_reduction(reduction)
  if kind != 'proj':
    return list(tap_names)
  return [f'{name}/p{j}' for name in tap_names for j in range(k)]


def reduce_taps(
    taps: Dict[str, jnp.ndarray], reduction: str, projections: Sequence[np.ndarray] = ()
) -> jnp.ndarray:
  """taps: {name: f[B, ..., C_l]} (forward order = sorted names) -> signals f32[S].

  S = number of taps for mean/rms, taps * K for proj:K. Reductions run in float32 whatever
  the compute dtype, since the signal differences between steps are small.
  """
  kind, _ = parse_reduction(reduction)
  out = []
  for index, name in enumerate(sorted(taps)):
    a = taps[name].astype(jnp.float32)
    if kind == 'mean':
      out.append(jnp.mean(a)[None])
    elif kind == 'rms':
      out.append(jnp.sqrt(jnp.mean(jnp.square(a)))[None])
    else:
      channel_means = jnp.mean(a.reshape(-1, a.shape[-1]), axis=0)
      out.append(projections[index] @ channel_means)
  return jnp.concatenate(out)
