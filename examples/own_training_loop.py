"""Your own Flax training loop, with the dynamics tracker added in the lines marked `# +dyn`.

Nothing here uses this project's training code: a small Flax Linen CNN, synthetic images, optax
SGD and one jitted step. The model records its taps the Flax way,
``self.sow('intermediates', name, x)``, with no dynamics code in it; the tracker state is one more
pytree that the step takes and returns. Remove the marked lines (and restore the `model.apply`
call) and it is a plain training loop.

    pip install -e .   # or PYTHONPATH=. from the repository root
    python examples/own_training_loop.py   # about 25 s on a 2-core CPU, a third of it training
"""

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dynamics  # +dyn

NUM_CLASSES = 4
SIDE = 16


class CNN(nn.Module):
  """f[B, 16, 16, 3] -> logits f[B, classes]; five taps: four convolutions and the hidden layer."""

  @nn.compact
  def __call__(self, x):
    for index, width in enumerate((8, 16, 16, 32)):
      x = nn.relu(nn.Conv(width, (3, 3), strides=2 if index else 1)(x))
      self.sow('intermediates', f'conv{index + 1}', x)
    x = nn.relu(nn.Dense(32)(jnp.mean(x, axis=(1, 2))))
    self.sow('intermediates', 'hidden', x)
    return nn.Dense(NUM_CLASSES)(x)


def synthetic_data(num: int, seed: int = 0):
  """Learnable images: one smooth colour pattern per class, random shifts, plus noise."""
  rng = np.random.default_rng(seed)
  grid = np.linspace(0, 2 * np.pi, SIDE)
  patterns = np.stack(
      [
          np.sin((c + 1) * grid[:, None] + np.arange(3) * c)[:, None, :]
          * np.cos((c + 1) * grid[None, :, None])
          for c in range(NUM_CLASSES)
      ]
  )
  labels = rng.integers(0, NUM_CLASSES, num)
  shifts = rng.integers(0, SIDE, num)
  images = np.stack([np.roll(patterns[c], s, axis=1) for c, s in zip(labels, shifts)])
  images = images + rng.normal(0, 0.8, images.shape)
  return images.astype(np.float32), labels.astype(np.int32)


def main(num_steps: int, batch: int, window: int) -> dict:
  images, labels = synthetic_data(2048)
  model = CNN()
  params = model.init(jax.random.key(0), images[:1])['params']
  tx = optax.sgd(0.05, momentum=0.9)
  opt_state = tx.init(params)

  tap_shapes = jax.eval_shape(  # +dyn
      lambda: dynamics.apply_with_taps(model, {'params': params}, images[:batch])[1]
  )  # +dyn
  tracker = dynamics.make_tracker(  # +dyn
      # recent_steps: the state keeps the step series of this many steps (a ring; default
      # max(window, 256)); the loop below drains them to the host as often.
      {
          'window': window,
          'volatility_window_steps': 10,
          'probe_mode': False,  # +dyn
          'recent_steps': window,
      },  # +dyn
      tap_shapes,
      num_steps,
  )  # +dyn
  dyn_state = tracker.init()  # +dyn
  step_series = dynamics.StepSeries()  # +dyn: the whole run's step series, on the host

  # Donating the state (params, optimizer and tracker state) lets XLA update it in place: the
  # tracker's step series are the largest part of it on a long run.
  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, opt_state, dyn_state, x, y, step):
    def loss_fn(params):
      logits, taps = dynamics.apply_with_taps(model, {'params': params}, x)  # +dyn (model.apply)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, taps)

    (loss, (logits, taps)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}
    dyn_state, dyn_metrics = tracker.record_step(dyn_state, taps, step)  # +dyn
    metrics.update(dyn_metrics)  # +dyn
    return params, opt_state, dyn_state, metrics

  start = time.time()
  rng = np.random.default_rng(1)
  steps_per_epoch = len(images) // batch
  for step in range(num_steps):
    if step % steps_per_epoch == 0:  # a new epoch: a new order
      order = rng.permutation(len(images))
    index = order[(step % steps_per_epoch) * batch :][:batch]
    params, opt_state, dyn_state, metrics = train_step(
        params, opt_state, dyn_state, images[index], labels[index], step
    )
    if (step + 1) % tracker.recent_steps == 0:  # +dyn: the state holds the last K steps only
      step_series.update(tracker, dyn_state)  # +dyn
    if (step + 1) % 50 == 0 or step + 1 == num_steps:
      fetched = jax.device_get(metrics)
      line = f'step {step + 1:4d}  loss {fetched["loss"]:.3f}  acc {fetched["accuracy"]:.2f}'
      for key, value in tracker.summarize_step(fetched).items():  # +dyn
        line += f'  {key.split("/")[1]} {value:.4g}'  # +dyn
      print(line, flush=True)

  step_series.update(tracker, dyn_state)  # +dyn
  series = tracker.export(dyn_state, step_series.arrays())  # +dyn: step_signals f32[S, steps], ...
  print(f'{time.time() - start:.1f} s for {num_steps} steps')
  print('step series: %d signals x %d steps' % series['step_signals'].shape)  # +dyn
  print('per-tap DFA alpha over the last window:')
  for name, alpha in zip(series['tap_names'], series['step_alphas']):
    print(f'  {dynamics.display_name(str(name)):8s} {alpha:.3f}')
  convergence = int(series['step_convergence'])
  print('convergence signal at step', convergence if convergence >= 0 else 'not fired')
  return series


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=400)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--window', type=int, default=128, help='step-mode window (samples)')
  args = parser.parse_args()
  main(args.steps, args.batch, args.window)
