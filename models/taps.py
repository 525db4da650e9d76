"""Activation taps: named points in a model whose outputs the dynamics tracker records.

A model declares a tap the way Flax records any intermediate value,
``self.sow('intermediates', name, x)``, and its ``__call__(x, train)`` returns only the logits.
``apply_with_taps(model, variables, x, ...)`` is ``model.apply`` that also returns the taps: a
dict from ``'{index:02d}_{name}'`` to the activation ``f[B, ..., C]``. The zero-padded forward
index ("00_stem", "01_stage1_block1", ...) keeps them in forward order through every pytree
flatten, which sorts dict keys (dynamics/taps.py). A plain ``model.apply`` records nothing
(sow is a no-op when 'intermediates' is not mutable), so evaluation does not compute them.
"""

from dynamics.taps import apply_with_taps, display_name, taps_from_intermediates

__all__ = ['apply_with_taps', 'display_name', 'taps_from_intermediates']
