"""An NNX training loop with a metric of your own: the installed `dynamics` package, nothing else.

A small NNX CNN with BatchNorm, optax through `nnx.Optimizer`, one `nnx.jit` step that donates
the tracker state, and a metric added with `dynamics.register_metric`: the permutation entropy
of each layer's signal (Bandt & Pompe 2002), tested against shuffled surrogates (ordered dynamics
have lower entropy than their shuffles, so the test is one-sided 'less'). The tracker computes
it in the step window and in the epoch probe beside the built-ins, with its z and p; the step
outputs are averaged with `dynamics.nnx_average`, which leaves out the NaN before the first
window. Runs from any folder with the package installed (CI copies it out of the repository):

    pip install .            # the dynamics library (or PYTHONPATH=<repository>)
    python nnx_registry.py   # about 40 s on a 2-core CPU
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dynamics

ORDER = 3  # ordinal patterns of 3 consecutive samples: 3! = 6 of them


def permutation_entropy(x: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over signals of the normalised permutation entropy, in [0, 1].

  x: f[S, N] signals; valid: bool[S, N], the samples to use (a pattern needs all of its)."""
  n = x.shape[-1] - ORDER + 1
  windows = jnp.stack([x[:, k : k + n] for k in range(ORDER)], axis=-1)  # f[S, n, ORDER]
  usable = jnp.all(jnp.stack([valid[:, k : k + n] for k in range(ORDER)], axis=-1), axis=-1)
  ranks = jnp.argsort(jnp.argsort(windows, axis=-1), axis=-1)
  code = jnp.sum(ranks * ORDER ** jnp.arange(ORDER), axis=-1)  # one code per pattern
  counts = jnp.sum(jax.nn.one_hot(code, ORDER**ORDER) * usable[..., None], axis=1)  # f[S, 27]
  p = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0), axis=-1)
  return jnp.mean(entropy / math.log(math.factorial(ORDER)))


dynamics.register_metric(
    'permutation_entropy',
    permutation_entropy,
    needs='signals',
    null='shuffle',
    alternative='less',
    min_samples=ORDER + 1,
    replace=True,
)


class CNN(nnx.Module):
  """f[B, 16, 16, 3] -> logits f[B, 4]; taps: two conv blocks (with BatchNorm) and the pool."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1, self.bn1 = nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
    self.bn2 = nnx.BatchNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    self.sow(nnx.Intermediate, 'conv1', x)
    x = nnx.relu(self.bn2(self.conv2(x)))
    self.sow(nnx.Intermediate, 'conv2', x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow(nnx.Intermediate, 'pool', x)
    return self.head(x)


def synthetic_data(num: int, seed: int = 0):
  """Learnable images: a colour stripe pattern per class, randomly shifted, plus noise."""
  rng = np.random.default_rng(seed)
  grid = np.linspace(0, 2 * np.pi, 16)
  patterns = np.stack(
      [
          np.sin((c + 1) * grid[:, None, None] + np.arange(3) * c) * np.ones((16, 16, 3))
          for c in range(4)
      ]
  )
  labels = rng.integers(0, 4, num)
  images = np.stack(
      [np.roll(patterns[c], s, axis=0) for c, s in zip(labels, rng.integers(0, 16, num))]
  )
  return (images + rng.normal(0, 0.8, images.shape)).astype(np.float32), labels.astype(np.int32)


def main(num_steps: int, batch: int, window: int, epochs: int) -> dict:
  images, labels = synthetic_data(2048)
  probe = images[:128]
  model = CNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)

  # jax.eval_shape cannot trace an NNX module with BatchNorm; nnx.eval_shape can.
  tap_shapes = nnx.eval_shape(
      lambda m, x: dynamics.nnx_apply_with_taps(m, x)[1], model, images[:batch]
  )
  # Short-run settings: DFA scales from 3 samples to half the history, so that the epoch
  # probe's integration is defined from its 10th epoch on (the defaults need 24), and a DSI
  # volatility over 3 epochs.
  dcfg = {
      'window': window,
      'volatility_window_steps': 10,
      'sliding_epochs': 10,
      'dfa_min_scale': 3,
      'dfa_max_divisor': 2,
      'volatility_window_epochs': 3,
  }
  tracker = dynamics.make_tracker(dcfg, tap_shapes, num_steps, num_epochs=epochs)
  assert 'permutation_entropy' in [m.name for m in dynamics.registered()]
  dyn = tracker.init()
  series = dynamics.StepSeries()
  average = nnx.MultiMetric(
      loss=nnx.metrics.Average('loss'),
      entropy=dynamics.nnx_average('dynamics/permutation_entropy'),
      dsi=dynamics.nnx_average('dynamics/dsi'),
  )

  @nnx.jit(donate_argnums=2)  # the tracker state is updated in place
  def train_step(model, optimizer, dyn, x, y, step):
    def loss_fn(model):
      logits, taps = dynamics.nnx_apply_with_taps(model, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), taps

    (loss, taps), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    dyn, outputs = tracker.record_step(dyn, taps, step)
    return dyn, dict(outputs, loss=loss)

  @nnx.jit
  def probe_step(model, dyn, x):  # the epoch probe, in inference mode, inside the user's jit
    model.eval()
    _, taps = dynamics.nnx_apply_with_taps(model, x)
    model.train()
    return tracker.probe_update(dyn, tracker.reduce(taps))

  rng = np.random.default_rng(1)
  steps_per_epoch = num_steps // epochs
  losses = []
  for step in range(num_steps):
    index = rng.integers(0, len(images), batch)
    dyn, outputs = train_step(model, optimizer, dyn, images[index], labels[index], step)
    average.update(**outputs)
    losses.append(float(outputs['loss']))
    if (step + 1) % tracker.recent_steps == 0:
      series.update(tracker, dyn)
    if (step + 1) % steps_per_epoch == 0:
      dyn = probe_step(model, dyn, probe)
      means = {k: float(v) for k, v in average.compute().items()}
      scalars, _ = tracker.summarize_probe(dyn)
      print(
          f'epoch {(step + 1) // steps_per_epoch}: loss {means["loss"]:.3f}  '
          f'mean permutation entropy {means["entropy"]:.3f}  mean dsi {means["dsi"]:.3f}  '
          f'probe entropy {scalars.get("dynamics_epoch/permutation_entropy", float("nan")):.3f}  '
          f'probe integration {scalars.get("dynamics_epoch/integration", float("nan")):.3f}',
          flush=True,
      )
      average.reset()
  series.update(tracker, dyn)
  out = tracker.export(dyn, series.arrays())
  last = np.flatnonzero(np.isfinite(out['step_permutation_entropy']))[-1]
  print(
      f'step {last + 1}: permutation entropy {out["step_permutation_entropy"][last]:.3f} '
      f'(z {out["step_permutation_entropy_z"][last]:+.2f}, '
      f'p {out["step_permutation_entropy_p"][last]:.3f} against shuffled surrogates)'
  )
  print(f'loss: first 20 steps {np.mean(losses[:20]):.3f}, last 20 {np.mean(losses[-20:]):.3f}')
  return out


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=420)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--window', type=int, default=64)
  parser.add_argument('--epochs', type=int, default=14)
  args = parser.parse_args()
  main(args.steps, args.batch, args.window, args.epochs)
