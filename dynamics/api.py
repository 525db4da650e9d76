"""The tracker as a library: ``make_tracker`` for any training loop, with any config mapping.

``dynamics.make_tracker`` is ``dynamics.tracker.make_tracker`` (the project's own loop calls
that one with its ConfigDict) with the config made optional: None, a dict of the fields to
change, a dataclass or a ConfigDict (``dynamics.config.as_config``); and ``tap_shapes`` may map
names to arrays or ``jax.ShapeDtypeStruct`` as well as to shapes, so the output of
``jax.eval_shape`` of a forward pass that returns taps goes in directly.
"""

from collections.abc import Mapping
from typing import Any, Sequence, Union

from dynamics import config as config_lib, tracker as tracker_lib

Shape = Sequence[int]


def _shape(name: str, value: Any) -> tuple[int, ...]:
  shape = getattr(value, 'shape', value)
  try:
    return tuple(int(d) for d in shape)
  except TypeError:
    raise TypeError(
        f'tap_shapes[{name!r}]={value!r} must be a shape (tuple of ints), an array '
        'or a jax.ShapeDtypeStruct.'
    ) from None


def make_tracker(
    dcfg: Any,
    tap_shapes: Mapping[str, Union[Shape, Any]],
    num_steps: int,
    num_epochs: int = 1,
    seed: int = 0,
) -> tracker_lib.Tracker:
  """Builds the pure tracker functions (``dynamics.Tracker``) for one run.

  Args:
    dcfg: the dynamics config: None (``default_config()``), a mapping or dataclass of fields
      to change from it, or a full ConfigDict; an unknown field is an error.
    tap_shapes: ``{tap name: shape}`` (or arrays / ShapeDtypeStructs), the taps of one
      forward pass, e.g. ``jax.eval_shape`` of it; names sort in forward order (the names of
      ``dynamics.taps_from_intermediates`` do). Shapes ``(B, ..., C)``; only C matters, and
      only for ``reduction='proj:K'``.
    num_steps: the training steps of the run: the step buffers hold ``f32[S, num_steps]``.
    num_epochs: probe samples the run will record (``probe_update`` calls), at least 1.
    seed: the run's seed; the surrogate (null-model) draws derive from it.

  Fields left at ``auto`` (0: ``window``, ``volatility_window_steps``) are sized to
  ``num_steps`` with the rules the project's loop uses (``dynamics.tracker.resolve_auto``:
  256 and 50 on runs of at least 512 steps).

  Returns:
    ``Tracker(init, record_step, reduce, probe_update, summarize_step, summarize_probe, export,
    signal_names, tap_names)``; ``init()`` is a flat dict of arrays (a pytree to keep in the
    train state). See dynamics/tracker.py for each function's shapes.
  """
  if not tap_shapes:
    raise ValueError(
        'tap_shapes is empty: the tracker needs at least one tap (a model that '
        "sows with self.sow('intermediates', name, x); see dynamics.taps)."
    )
  shapes = {name: _shape(name, value) for name, value in tap_shapes.items()}
  dcfg = config_lib.as_config(dcfg)  # a copy: resolving `auto` leaves the caller's alone
  tracker_lib.resolve_auto(dcfg, num_steps)
  return tracker_lib.make_tracker(dcfg, shapes, num_steps, num_epochs, seed=seed)
