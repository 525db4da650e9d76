"""Input coercion shared by the metric functions."""

import jax
import jax.numpy as jnp


def as_real_float(x: jax.typing.ArrayLike, what: str) -> jax.Array:
  """x as a real floating array (integers promoted to the default float; complex rejected)."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise ValueError(f'{what} needs a real-valued signal, got dtype {x.dtype}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x
