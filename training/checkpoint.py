"""Orbax checkpoints of the whole train state (dynamics buffers included)."""

import os
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save(manager: ocp.CheckpointManager, state, force: bool = False):
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
               force=force)


def restore_latest(manager: ocp.CheckpointManager, template, sharding) -> Optional[object]:
  """The newest checkpoint restored into `template`'s structure with `sharding`, or None.

  template: a TrainState (abstract or concrete) with the shapes of this config.
  """
  step = manager.latest_step()
  if step is None:
    return None
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      flax.serialization.to_state_dict(template))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  logging.info('Restored checkpoint at step %d from %s', step, manager.directory)
  return flax.serialization.from_state_dict(template, restored)
