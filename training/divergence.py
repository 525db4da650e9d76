"""The run's divergence guards: a NaN/Inf loss, gradient norm or state stops the run before
anything diverged is saved, naming the last good checkpoint."""

import math
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from training import steps


def diverged(what: str, step: int, workdir: str, last_saved: Optional[int]):
  kept = (
      f'The last good checkpoint (step {last_saved}) is kept in '
      f'{os.path.join(workdir, "checkpoints")}'
      if last_saved is not None
      else 'No checkpoint was saved'
  )
  return FloatingPointError(
      f'{what} at step {step}: training diverged. {kept}; lower learning_rate (or set '
      'grad_clip_norm) and run again in a fresh workdir (or with --overwrite, which moves '
      'this one aside).'
  )


def check_finite(values: Dict[str, float], step: int, workdir: str, last_saved, where: str = ''):
  for key in ('train/loss', 'train/grad_norm'):
    if key in values and not math.isfinite(values[key]):
      raise diverged(f'{key} = {values[key]}{where}', step, workdir, last_saved)


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


def check_state_finite(state: steps.TrainState, step: int, workdir: str, last_saved):
  """Raises if any parameter, BatchNorm statistic or optimiser slot is NaN/Inf.

  Run before every save: the loss of step s is computed with the parameters before its update,
  so a finite loss does not prove that the state about to be saved is finite. (The dynamics
  buffers hold NaN by design where nothing was computed, so they are not checked.)
  """
  tree = {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state}
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite_leaves(tree)))
  bad = [jax.tree_util.keystr(path, simple=True, separator='/') for path, ok in flat if not ok]
  if bad:
    names = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    raise diverged(f'NaN/Inf in {names}', step, workdir, last_saved)
