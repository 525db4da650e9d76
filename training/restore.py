"""The run's state at its start: step 0 from the seeds (and pretrained weights), or the
newest readable checkpoint of this workdir."""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

import models
from training import replicas as replicas_lib


def initial_state(config, exp, replicated):
  """exp: training/programs.Experiment."""
  """The state at step 0: seed's init (and pretrained weights); stacked over replicas."""

  def one(seed):
    state = exp.init_state(seed)
    if 'surrogate_key' in state.dynamics:  # the tracker was built with config.seed
      # Replica k draws its surrogates as the 1-replica run of seed + k would.
      state = state.replace(
          dynamics=dict(
              state.dynamics,
              surrogate_key=jax.device_put(
                  jax.random.key_data(jax.random.key(seed)),
                  state.dynamics['surrogate_key'].sharding,
              ),
          )
      )
    if config.init_checkpoint:
      # Every replica gets the same pretrained weights; what the release does not hold (the
      # new head) keeps replica k's own initialisation from seed + k.
      try:
        init_params = models.load_pretrained(config.model, state.params, config.init_checkpoint)
      except (OSError, ValueError, KeyError, EOFError) as e:  # numpy's own words name no file
        raise ValueError(
            f'init_checkpoint={config.init_checkpoint!r} cannot be read as pretrained weights '
            f'of {config.model!r} ({type(e).__name__}: {e})'
        ) from e
      state = jax.device_put(
          state.replace(params=init_params, opt_state=exp.tx.init(init_params)), replicated
      )
    return state

  if config.replicas == 1:
    return one(config.seed)
  if config.init_checkpoint:
    logging.info(
        'init_checkpoint with %d replicas: all start from %s; the heads are '
        'initialised per replica (seeds %d..%d).',
        config.replicas,
        config.init_checkpoint,
        config.seed,
        config.seed + config.replicas - 1,
    )
  return jax.device_put(
      replicas_lib.stack([one(config.seed + k) for k in range(config.replicas)]), exp.state_sharding
  )


def check_checkpoint_replicas(manager, config):
  """A checkpoint of an N-replica run cannot be resumed with another N: say so, naming the
  field, instead of letting the restore fail (and the checkpoint look damaged)."""
  steps_saved = manager.all_steps()
  if not steps_saved:
    return
  try:
    # A fresh manager's item_metadata() knows no handler yet; read the step's tree metadata.
    path = os.path.join(str(manager.directory), str(max(steps_saved)), 'default')
    with ocp.StandardCheckpointer() as reader:
      saved = replicas_lib.num_replicas_in(reader.metadata(path).item_metadata)
  except Exception:  # pylint: disable=broad-except
    return  # unreadable metadata: restore_latest reports the damage
  if saved != config.replicas:
    raise ValueError(
        f'The checkpoints in {manager.directory} hold a {saved}-replica state but this run has '
        f'replicas={config.replicas} (config field `replicas`). Resume it with '
        f'--config.replicas={saved}, or start the {config.replicas}-replica run in a fresh '
        '--workdir.'
    )
