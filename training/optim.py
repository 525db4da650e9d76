"""Optimiser and learning-rate schedule from the config (optax)."""

import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('cosine', 'constant')


def make_schedule(config, steps_per_epoch: int, total_steps: int):
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(total_steps, warmup + 1)
    )
  if config.schedule == 'constant':
    if warmup == 0:
      return optax.constant_schedule(config.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, warmup),
            optax.constant_schedule(config.learning_rate),
        ],
        [warmup],
    )
  raise ValueError(f'schedule={config.schedule!r}; allowed: {", ".join(SCHEDULES)}.')


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  """SGD/Adam take L2 weight decay added to the gradient (the usual CIFAR recipe); AdamW
  decouples it."""
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == 'sgd':
    if config.weight_decay:
      chain.append(optax.add_decayed_weights(config.weight_decay))
    chain.append(optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  elif config.optimizer == 'adam':
    if config.weight_decay:
      chain.append(optax.add_decayed_weights(config.weight_decay))
    chain.append(optax.adam(schedule))
  elif config.optimizer == 'adamw':
    chain.append(optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    raise ValueError(f'optimizer={config.optimizer!r}; allowed: {", ".join(OPTIMIZERS)}.')
  return optax.chain(*chain)
