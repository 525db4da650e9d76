"""Activation taps: named points in a model whose outputs the dynamics tracker records.

A model's ``__call__(x, train)`` returns ``(logits, taps)``; ``taps`` is a dict from tap name
to activation ``f[B, ..., C]``. Names carry a zero-padded forward index ("00_stem",
"01_stage1_block1", ...) so that every pytree flatten, which sorts dict keys, keeps them in
forward order. Nothing reads taps that the train step does not use, so with the dynamics
tracker off XLA removes them.
"""

from typing import Dict

import jax.numpy as jnp


class TapRecorder:
  """Collects activations in call order under sortable names."""

  def __init__(self):
    self.taps: Dict[str, jnp.ndarray] = {}

  def __call__(self, name: str, x: jnp.ndarray) -> jnp.ndarray:
    self.taps[f'{len(self.taps):02d}_{name}'] = x
    return x


def display_name(tap_key: str) -> str:
  """'03_stage1_block3' -> 'stage1_block3' (the index only exists to fix the order)."""
  return tap_key.split('_', 1)[1] if '_' in tap_key else tap_key
