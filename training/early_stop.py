"""Early stopping (or a learning-rate decay) on the dynamics' convergence signal.

The study's finding 2 says the DSI volatility settles before test accuracy plateaus; if so,
its convergence signal is a stopping rule. `config.early_stop` makes it one:

    enabled      False: nothing changes.
    signal       'epoch': the probe-mode signal of the `history` ('expanding' or 'sliding');
                 'step': the step-mode signal (the every-step training taps).
    min_epochs   no action before this many epochs are done.
    action       'stop': the run saves a final checkpoint and ends (summary.json says
                 stopped_early, the epoch and the reason); a replica of a multi-seed run is
                 frozen instead (its updates masked, training/steps.py) while the others go
                 on, and the run ends once every replica has stopped.
                 'decay': the learning rate is multiplied by `decay_factor` once, and
                 training goes on to the end.

The rule is checked at each epoch end, after the probe: it acts at the first epoch end at
which the chosen signal has fired (the tracker's convergence index is >= 0) and at least
`min_epochs` epochs are done. The signal is causal (each sample uses the past only), so the
epoch it acts at is known during training: the signal's first sample plus its patience.

The decision is part of the train state (`TrainState.early_stop`, per replica the 1-based
epoch at which the rule acted, -1 before), so a resumed run acts exactly as an uninterrupted
one and a stopped run restarted does not train again.
"""

from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SIGNALS = ('epoch', 'step')
HISTORIES = ('expanding', 'sliding')
ACTIONS = ('stop', 'decay')


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.signal = 'epoch'
  # The sliding window, because the expanding history calms by its own growth (the report's
  # finding 2 measures both).
  c.history = 'sliding'
  c.min_epochs = 0
  c.action = 'stop'
  c.decay_factor = 0.1  # action 'decay': the learning rate is multiplied by this, once
  return c


def enabled(config) -> bool:
  early = config.get('early_stop')
  return bool(early is not None and early.enabled)


def init_state(config) -> Dict[str, Any]:
  """The early-stop part of a train state: {} when disabled, else {'epoch': i32[]} = -1."""
  return {'epoch': jnp.full((), -1, jnp.int32)} if enabled(config) else {}


def convergence_key(early) -> str:
  """The tracker state's convergence index the rule reads."""
  if early.signal == 'step':
    return 'step_convergence'
  return 'probe_sliding_convergence' if early.history == 'sliding' else 'probe_convergence'


def describe(early) -> str:
  """'the epoch-mode convergence signal (sliding history)', for logs and summary.json."""
  if early.signal == 'step':
    return 'the step-mode convergence signal'
  return f'the epoch-mode convergence signal ({early.history} history)'


def acted(state_early: Dict[str, Any]) -> jnp.ndarray:
  """bool[] (per replica inside a replicated step): the rule has acted."""
  return state_early['epoch'] >= 0


def apply_to_step(config, old_state, new_state, updates=None):
  """Inside the train step (one replica). 'stop': a replica that stopped keeps its state (all
  but the step counter), so it is frozen while the others train. 'decay': `updates` (the
  optimiser's, which already carry the learning rate) scaled by decay_factor after the rule
  acted; returns the scaled updates. Without early stopping both pass through."""
  if not enabled(config) or not old_state.early_stop:
    return new_state if updates is None else updates
  done = acted(old_state.early_stop)
  if updates is not None:
    if config.early_stop.action != 'decay':
      return updates
    scale = jnp.where(done, jnp.float32(config.early_stop.decay_factor), jnp.float32(1.0))
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
  if config.early_stop.action != 'stop':
    return new_state
  frozen = jax.tree.map(
      lambda new, old: jnp.where(done, old, new),
      new_state.replace(step=old_state.step),
      old_state,
  )
  return frozen.replace(step=new_state.step)


def epochs_acted(state_early: Dict[str, Any], n: int) -> np.ndarray:
  """Host side: i32[n], the epoch at which the rule acted for each replica (-1: not yet)."""
  if not state_early:
    return np.full(n, -1, np.int32)
  return np.array(jax.device_get(state_early['epoch']), np.int32).reshape(n)  # a writable copy


def check(config, dynamics_per_replica: List[Dict[str, Any]], acted_at: np.ndarray, epoch: int):
  """Host side, at the end of `epoch` (1-based): the replicas for which the rule acts now.

  dynamics_per_replica: each replica's fetched tracker state; acted_at: i32[n] as
  epochs_acted. Returns the list of replica indices k that act at this epoch.
  """
  early = config.early_stop
  if epoch < early.min_epochs:
    return []
  key = convergence_key(early)
  return [
      k
      for k, dyn in enumerate(dynamics_per_replica)
      if acted_at[k] < 0 and int(np.asarray(dyn[key])) >= 0
  ]


def summary_fields(config, acted_at: Optional[int]) -> Dict[str, Any]:
  """summary.json fields of one replica: stopped_early, the epoch and the reason (stop), or
  lr_decayed_at_epoch (decay). {} when early stopping is off."""
  if not enabled(config):
    return {}
  early = config.early_stop
  fired = acted_at is not None and acted_at >= 0
  reason = (
      f'{describe(early)} fired by epoch {acted_at} (min_epochs={early.min_epochs})'
      if fired
      else f'{describe(early)} did not fire'
  )
  if early.action == 'decay':
    return {
        'lr_decayed_at_epoch': int(acted_at) if fired else None,
        'early_stop_reason': reason,
    }
  return {
      'stopped_early': fired,
      'stop_epoch': int(acted_at) if fired else None,
      'early_stop_reason': reason,
  }
