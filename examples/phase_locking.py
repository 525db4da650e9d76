"""A metric of your own: the phase-locking value (PLV) between layers, registered with dynamics.

Importing this module registers `phase_locking`; every tracker built afterwards computes it in
the step window and the epoch probe, with its z and p against the phase-randomised null, and
writes it wherever the built-ins go (metrics.jsonl, TensorBoard, dynamics.npz, the ablation and
the report). In the project's runs:

    python train.py --config=configs/quickstart.py \
        --config.dynamics.metric_modules=examples.phase_locking
"""

import jax
import jax.numpy as jnp

import dynamics


def phase_locking(phi: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over pairs of layers a < b of |mean over t of exp(i (phi_a - phi_b))|.

  phi: f[S, N] instantaneous phases (radians); valid: bool[S, N], the samples to use."""
  w = valid.astype(phi.dtype)
  c, s = jnp.cos(phi) * w, jnp.sin(phi) * w
  dot = lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)  # noqa: E731
  real, imag = dot(c, c) + dot(s, s), dot(s, c) - dot(c, s)  # sum_t exp(i phi_a - i phi_b)
  count = dot(w, w)  # samples valid in both
  plv = jnp.sqrt(real * real + imag * imag) / jnp.maximum(count, 1)
  pairs = jnp.triu(count > 0, k=1)
  return jnp.sum(jnp.where(pairs, plv, 0)) / jnp.maximum(jnp.sum(pairs), 1)


dynamics.register_metric(
    'phase_locking', phase_locking, needs='phases', null='phase', min_samples=4, replace=True
)
