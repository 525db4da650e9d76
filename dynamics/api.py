"""The tracker as a library: ``make_tracker`` for any training loop, with any config mapping.

``dynamics.make_tracker`` is ``dynamics.tracker.make_tracker`` (the project's own loop calls
that one with its ConfigDict) with the config made optional: None, a dict of the fields to
change, a dataclass or a ConfigDict (``dynamics.config.as_config``); and ``tap_shapes`` may map
names to arrays or ``jax.ShapeDtypeStruct`` as well as to shapes, so the output of
``jax.eval_shape`` of a forward pass that returns taps goes in directly. Unlike the loop's
call, it checks the run's length itself (``dynamics.run_length``) and warns when a step is
recorded past ``num_steps``.
"""

import logging
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from dynamics import run_length, tracker as tracker_lib

Shape = Sequence[int]
_FIX = (
    'pass {tap name: shape}: the taps dict itself, e.g. jax.eval_shape(lambda: '
    'dynamics.apply_with_taps(model, variables, x)[1]) (note the [1]: apply_with_taps returns '
    '(output, taps)), or dynamics.taps_from_intermediates(collection).'
)


class RunFitWarning(UserWarning):
  """A setting that does not fit this run (num_steps, num_epochs): a metric it will not
  compute or resolve, a step recorded past num_steps."""


def _shape(name: str, value: Any) -> tuple[int, ...]:
  if isinstance(value, (Mapping, list, tuple)) and not all(
      isinstance(d, (int, np.integer)) for d in value
  ):
    kind = 'a mapping' if isinstance(value, Mapping) else f'a {type(value).__name__}'
    raise TypeError(
        f'tap_shapes[{name!r}] is {kind}, not a shape: this looks like a raw intermediates '
        "collection (Linen's {'intermediates': {name: (array,)}} or an NNX state); " + _FIX
    )
  shape = getattr(value, 'shape', value)
  try:
    return tuple(int(d) for d in shape)
  except (TypeError, ValueError):
    raise TypeError(
        f'tap_shapes[{name!r}]={value!r} must be a shape (tuple of ints), an array '
        'or a jax.ShapeDtypeStruct.'
    ) from None


def _tap_shapes(tap_shapes: Any) -> dict[str, tuple[int, ...]]:
  if not isinstance(tap_shapes, Mapping):
    what = type(tap_shapes).__name__
    if isinstance(tap_shapes, (tuple, list)):
      what += f' of {len(tap_shapes)} item(s)'
      if any(isinstance(item, Mapping) for item in tap_shapes):
        what += ' (one a dict: the (output, taps) pair of a forward pass?)'
    raise TypeError(f'tap_shapes is a {what}, expected a dict {{tap name: shape}}; ' + _FIX)
  if not tap_shapes:
    raise ValueError(
        'tap_shapes is empty: the tracker needs at least one tap (a model that '
        "sows with self.sow('intermediates', name, x); see dynamics.taps)."
    )
  return {name: _shape(name, value) for name, value in tap_shapes.items()}


def _warn_past_end(num_steps: int) -> Callable[[Any], None]:
  def warn(step: Any) -> None:
    last = int(np.max(np.asarray(step)))
    warnings.warn(
        f'record_step(step={last}) is past the run: the tracker was built with '
        f'num_steps={num_steps} (steps 0 .. {num_steps - 1}), so the sample is not recorded. '
        "Pass the run's number of training steps as num_steps to dynamics.make_tracker.",
        RunFitWarning,
        stacklevel=2,
    )

  return warn


def make_tracker(
    dcfg: Any,
    tap_shapes: Mapping[str, Union[Shape, Any]],
    num_steps: Optional[int] = None,
    num_epochs: int = 1,
    seed: int = 0,
) -> tracker_lib.Tracker:
  """Builds the pure tracker functions (``dynamics.Tracker``) for one run.

  Args:
    dcfg: the dynamics config: None (``default_config()``), a mapping or dataclass of fields
      to change from it, or a full ConfigDict; an unknown field is an error.
    tap_shapes: ``{tap name: shape}`` (or arrays / ShapeDtypeStructs), the taps of one
      forward pass, e.g. ``jax.eval_shape`` of it; names sort in forward order (the names of
      ``dynamics.taps_from_intermediates`` do). Shapes ``(B, ..., C)``: ``record_step``
      and ``reduce`` refuse taps with other names, another rank or other sizes on any axis
      but the batch (B may differ), naming each offending tap.
    num_steps: the training steps of the run, or None (no set length). The state's size does
      not depend on it: the step series live in a ring of the last K = ``recent_steps`` steps
      (``dynamics.recent_steps``, auto: max(window, 256)), which the loop drains at least every
      K steps (``tracker.drain``, collected by ``dynamics.StepSeries``) if it wants the whole
      run's series. Given, it sizes the `auto` fields and is checked as below.
    num_epochs: probe samples the run will record (``probe_update`` calls), at least 1: the
      probe history's capacity. ``probe_update`` compiles once for all of them (the history
      length is traced) and may be called inside the user's own jitted evaluation step; there
      a sample past ``num_epochs`` is dropped (called eagerly, it is a ValueError).
    seed: the run's seed; the surrogate (null-model) draws derive from it.

  Fields left at ``auto`` (0: ``window``, ``volatility_window_steps``) are sized to
  ``num_steps`` with the rules the project's loop uses (256 and 50 on runs of at least 512
  steps, and without ``num_steps``), and the run's length is checked as the loop checks it
  (``dynamics.run_length.fit_to_run``): a setting no step of the run can honour (a window
  longer than ``num_steps``, a volatility window longer than the computed windows, ...) is a
  ValueError naming the field and the fix; a metric the run will not reach (too few epochs
  for the probe's DFA, ...) is a ``RunFitWarning``. A ``record_step`` at a step >=
  ``num_steps`` records nothing and warns (``RunFitWarning``) instead of overwriting the
  last sample.

  Returns:
    ``Tracker(init, record_step, reduce, probe_update, summarize_step, summarize_probe, export,
    signal_names, tap_names, drain, recent_steps, series_keys)``; ``init()`` is a flat dict
    of arrays (a pytree to keep in the train state, each entry its own buffer, so a jitted
    step may donate it). See dynamics/tracker.py for each function's shapes.

  Raises:
    TypeError: tap_shapes is not a dict of shapes (an ``(output, taps)`` pair, a raw
      intermediates collection).
    ValueError: no taps, an unknown config field, or a setting the run cannot honour.
  """
  shapes = _tap_shapes(tap_shapes)
  num_epochs = max(int(num_epochs), 1)
  fit = run_length.fit_to_run(dcfg, num_steps, num_epochs)  # raises on impossible settings
  for note in fit.notes:
    logging.getLogger('dynamics').info('%s', note)
  for message in fit.warnings:
    warnings.warn(message, RunFitWarning, stacklevel=2)
  return tracker_lib.make_tracker(
      fit.config,
      shapes,
      num_steps,
      num_epochs,
      seed=seed,
      on_step_past_end=_warn_past_end(int(num_steps)) if num_steps is not None else None,
  )
