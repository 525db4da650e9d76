"""Train state and the pure step functions (jitted with shardings in training/programs.py)."""

from typing import Any, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from data import augment as augment_lib
from dynamics.taps import apply_with_taps
from training import early_stop as early_stop_lib


@flax.struct.dataclass
class TrainState:
  """A plain pytree: step, model variables, optimiser state, base RNG, dynamics buffers.

  `rng` is a raw uint32[2] key that never changes; every step folds in its step number, so
  the randomness of step s is the same whether or not the run was interrupted before s.
  `early_stop` is {} unless config.early_stop is enabled (training/early_stop.py).
  """

  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray
  dynamics: Any
  early_stop: Any = flax.struct.field(default_factory=dict)


def create_train_state(
    rng, model, tx, tracker, image_shape, init_params=None, early_stop=None
) -> TrainState:
  """rng: raw key; image_shape: (H, W, 3) as the model sees it (after resizing);
  early_stop: early_stop.init_state(config) ({} or None when off)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(
      {'params': init_rng, 'dropout': init_rng},
      jnp.zeros((1,) + tuple(image_shape), jnp.float32),
      train=False,
  )
  params = variables['params'] if init_params is None else init_params
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      rng=state_rng,
      dynamics=tracker.init() if tracker is not None else {},
      early_stop=early_stop or {},
  )


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(
    state: TrainState,
    images,
    labels,
    *,
    model,
    tx,
    tracker,
    config,
    mean,
    std,
    num_classes: int,
    out_size: Optional[int],
):
  """One SGD step on a global batch. images: u8[B, H, W, 3], labels: i32[B].

  Returns the new state and metrics (loss, accuracy, grad norm, learning-rate-free scalars
  and, with the tracker on, this step's dynamics values, NaN where not computed).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  aug_rng, dropout_rng = jax.random.split(rng)
  x = augment_lib.augment(
      aug_rng,
      images,
      mean,
      std,
      crop_padding=config.crop_padding,
      flip=config.flip,
      out_size=out_size,
  )

  def loss_fn(params):
    (logits, taps), new_vars = apply_with_taps(
        model,
        {'params': params, 'batch_stats': state.batch_stats},
        x,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': dropout_rng},
    )
    loss = jnp.mean(cross_entropy(logits, labels, num_classes, config.label_smoothing))
    return loss, (logits, taps, new_vars.get('batch_stats', {}))

  (loss, (logits, taps, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = early_stop_lib.apply_to_step(config, state, None, updates)  # action 'decay'
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train/loss': loss,
      'train/accuracy': 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels),
      'train/grad_norm': optax.tree.norm(grads),
  }
  dynamics = state.dynamics
  if tracker is not None:
    dynamics, dyn_metrics = tracker.record_step(dynamics, taps, state.step)
    metrics.update(dyn_metrics)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      dynamics=dynamics,
  )
  # action 'stop': a stopped replica of a multi-seed run keeps its state.
  return early_stop_lib.apply_to_step(config, state, new_state), metrics


def eval_step(
    state: TrainState,
    images,
    labels,
    mask,
    *,
    model,
    mean,
    std,
    num_classes: int,
    out_size: Optional[int],
) -> Dict[str, jnp.ndarray]:
  """Sums over one padded batch; mask f32[B] is 0 on padding."""
  x = augment_lib.normalize(images, mean, std, out_size=out_size)
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x, train=False)
  loss = cross_entropy(logits, labels, num_classes)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask), 'count': jnp.sum(mask)}


def probe_signals(state: TrainState, images, *, model, tracker, mean, std, out_size: Optional[int]):
  """The probe batch in inference mode -> tap signals f32[S]."""
  x = augment_lib.normalize(images, mean, std, out_size=out_size)
  _, taps = apply_with_taps(
      model, {'params': state.params, 'batch_stats': state.batch_stats}, x, train=False
  )
  return tracker.reduce(taps)
