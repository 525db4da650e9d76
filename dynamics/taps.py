"""Taps from any Flax model: Linen ``sow`` / ``capture_intermediates`` and NNX intermediates.

A tap is a named activation ``f[B, ..., C]`` that the tracker reduces to a signal (DESIGN 3.1).
A model declares one the way Flax records any intermediate value:

    self.sow('intermediates', 'block1', x)           # Linen
    self.sow(nnx.Intermediate, 'block1', x)          # NNX

and the helpers here turn the recorded collection into the ordered ``{name: array}`` that
``Tracker.record_step`` takes:

    (logits, taps), updates = apply_with_taps(model, variables, x, mutable=['batch_stats'])
    logits, taps = nnx_apply_with_taps(model, x)     # NNX, through nnx.capture

Names. A tap is named ``'{index}_{path}'``: ``path`` joins the module path and the sow name with
'/' (``'Block_0/out'``; a sow at the top module is just its name), and ``index`` is its forward
position, zero-padded to a common width (``'00_stem'``, ``'01_Block_0/out'``). Every pytree
flatten and the tracker sort dict keys, so the index is what keeps the forward order once the
dict leaves the function that made it (a jit output, a ``value_and_grad`` aux, the tracker's
``tap_names``); ``display_name`` drops it again.

Order. Linen returns the collection in recording order (each scope's entries in the order they
were first written, a submodule's entries where the submodule first wrote), so call these
helpers on the collection straight out of ``apply``, inside the same function: a collection that
has already passed through ``jit`` comes back with its keys sorted. NNX's ``State`` keeps no call
order (it sorts names, and list items by index); its taps come in that module-tree order. The
metrics do not depend on the order of the taps (means over taps of per-tap quantities, and the
Kuramoto mean over taps); it only decides which per-tap alpha is reported under which position.

This module imports no Flax at import time; ``nnx_apply_with_taps`` imports ``flax.nnx`` when
called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax

from dynamics import signals

# filter: None (every array), a regular expression searched in the tap's path, or a callable
# (path, value) -> bool.
TapFilter = Union[None, str, re.Pattern, Callable[[str, Any], bool]]

INTERMEDIATES = 'intermediates'


def _unwrap(value: Any) -> Any:
  """An NNX Variable (nnx.Intermediate) -> its value; anything else unchanged."""
  if hasattr(value, 'get_value') and callable(value.get_value):
    return value.get_value()
  return value


def _is_array(value: Any) -> bool:
  return hasattr(value, 'shape') and hasattr(value, 'dtype')


def _walk(tree: Any, path: tuple[str, ...], out: list[tuple[str, Any]]) -> None:
  """Depth-first, in the mapping's own iteration order; sown tuples give one entry each."""
  tree = _unwrap(tree)
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      _walk(value, path + (str(key),), out)
  elif isinstance(tree, (tuple, list)):
    if len(tree) == 1:
      _walk(tree[0], path, out)
    else:  # a module called (or a name sown) several times: one tap per call, in call order
      for index, value in enumerate(tree):
        _walk(value, path + (str(index),), out)
  elif _is_array(tree):
    out.append(('/'.join(path), tree))


def _compile_filter(filter: TapFilter) -> Callable[[str, Any], bool]:
  if filter is None:
    return lambda path, value: True
  if isinstance(filter, (str, re.Pattern)):
    pattern = re.compile(filter)
    return lambda path, value: pattern.search(path) is not None
  if callable(filter):
    return filter
  raise TypeError(
      f'filter={filter!r} must be None, a regular expression (str) searched in the '
      "tap's path, or a callable (path, value) -> bool."
  )


def taps_from_intermediates(
    intermediates: Mapping[str, Any], filter: TapFilter = None
) -> dict[str, jax.Array]:
  """A recorded intermediates collection -> the ordered taps ``{'{i:02d}_{path}': f[B, ..., C]}``.

  Args:
    intermediates: Linen's ``'intermediates'`` collection (the nested dict of tuples that
      ``model.apply(..., mutable=['intermediates'])`` returns under that key, from ``sow`` or
      ``capture_intermediates=True``), or the ``State`` that ``nnx.capture(model,
      nnx.Intermediate)`` returns (Variables holding tuples). A name sown k > 1 times gives k
      taps, ``path/0`` .. ``path/{k-1}``.
    filter: which entries are taps. None: every array; a string: a regular expression searched
      in the path (``r'block\\d+/__call__$'`` picks the block outputs of a
      ``capture_intermediates`` run); a callable ``(path, value) -> bool``.

  Returns:
    ``{name: array}`` in forward order (see the module docstring), names ``f'{i:0{w}d}_{path}'``
    with ``w = max(2, digits of the last index)`` so that sorting keeps the order.

  Raises:
    ValueError: when no entry is selected (a model that sows nothing, or a filter that matches
      nothing), naming the paths that were there.
  """
  entries: list[tuple[str, Any]] = []
  _walk(intermediates, (), entries)
  keep = _compile_filter(filter)
  selected = [(path, value) for path, value in entries if keep(path, value)]
  if not selected:
    raise ValueError(
        f'No taps: filter={filter!r} selected none of the {len(entries)} recorded intermediates '
        f'({", ".join(path for path, _ in entries[:8]) or "none"}'
        f'{", ..." if len(entries) > 8 else ""}). Record activations with '
        "self.sow('intermediates', name, x) (Linen) or self.sow(nnx.Intermediate, name, x) (NNX), "
        "and apply the model with mutable=['intermediates'] (or nnx.capture)."
    )
  width = max(2, len(str(len(selected) - 1)))
  return {f'{index:0{width}d}_{path}': value for index, (path, value) in enumerate(selected)}


def display_name(tap_key: str) -> str:
  """'03_stage1_block3' -> 'stage1_block3' (the index only exists to fix the order)."""
  head, sep, tail = tap_key.partition('_')
  return tail if sep and head.isdigit() else tap_key


def _with_intermediates(mutable: Any) -> Any:
  if mutable is True:
    return True
  if mutable is False or mutable is None:
    return [INTERMEDIATES]
  if isinstance(mutable, str):
    return [mutable, INTERMEDIATES]
  if isinstance(mutable, Sequence):
    return list(mutable) + ([] if INTERMEDIATES in mutable else [INTERMEDIATES])
  raise TypeError(
      f'mutable={mutable!r}: apply_with_taps takes mutable as True, False, a '
      "collection name or a list of names (it adds 'intermediates')."
  )


def apply_with_taps(
    model: Any,
    variables: Mapping[str, Any],
    *args: Any,
    tap_filter: TapFilter = None,
    mutable: Any = False,
    **kwargs: Any,
) -> Any:
  """``model.apply`` for a Linen module, also returning its taps. Shapes as ``model.apply``.

  The same call as ``model.apply(variables, *args, mutable=mutable, **kwargs)`` with the
  output ``out`` replaced by ``(out, taps)``:

    mutable=False:   returns (out, taps)
    mutable=[...]:   returns ((out, taps), updated collections)   (without 'intermediates')

  'intermediates' is added to the mutable collections and any stale copy in ``variables`` is
  dropped, so each call records exactly one forward pass. taps: ``taps_from_intermediates`` of
  the recorded collection with ``tap_filter``. Works with ``capture_intermediates=...`` too.
  """
  variables = {k: v for k, v in variables.items() if k != INTERMEDIATES}
  out, updated = model.apply(variables, *args, mutable=_with_intermediates(mutable), **kwargs)
  updated = dict(updated)
  taps = taps_from_intermediates(updated.pop(INTERMEDIATES, {}), tap_filter)
  if mutable is False or mutable is None:
    return out, taps
  return (out, taps), updated


def nnx_apply_with_taps(
    fn: Callable[..., Any], *args: Any, tap_filter: TapFilter = None, **kwargs: Any
) -> tuple[Any, dict[str, jax.Array]]:
  """Runs an NNX module (or ``fn(module, ...)``) under ``nnx.capture`` -> (output, taps).

  ``fn`` is an ``nnx.Module`` (its ``__call__`` runs with ``*args``), a bound method of one, or
  a function whose first argument is the module, exactly as ``nnx.capture`` takes it. The
  values the modules sow as ``nnx.Intermediate`` during this call become the taps
  (``taps_from_intermediates``; module-tree order, see the module docstring); nothing stays
  on the module. Use it inside ``nnx.value_and_grad``/``nnx.jit`` like a plain call.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top  (dynamics never needs flax)

  out, intermediates = nnx.capture(fn, nnx.Intermediate)(*args, **kwargs)
  return out, taps_from_intermediates(intermediates, tap_filter)


def _expected_shape(shape: tuple[int, ...]) -> str:
  return '(B' + ''.join(f', {d}' for d in shape[1:]) + ')' if shape else '()'


def check_taps(taps: Any, tap_shapes: dict[str, tuple[int, ...]], reduction: str = 'mean') -> None:
  """Raises when `taps` are not the taps the tracker was built for (runs at trace time).

  taps must be a mapping with exactly the names of `tap_shapes`, each an array of the same
  rank whose axes after the first (batch) one equal the declared shape's: the batch may differ
  (a probe batch, an `eval_shape` of one example), nothing else may (a missing tap would
  otherwise stay a constant row and drop out of the metrics unnoticed).
  """
  if not isinstance(taps, Mapping):
    what = f'a {type(taps).__name__}'
    if isinstance(taps, (list, tuple)):
      what += f' of {len(taps)} item(s)'
    raise TypeError(
        f'taps is {what}; the tracker takes a dict {{tap name: array}} with the names it was '
        f'built with ({", ".join(sorted(tap_shapes))}). Build it with '
        'dynamics.apply_with_taps / nnx_apply_with_taps, or '
        'dynamics.taps_from_intermediates(collection) from a sown collection.'
    )
  expected = sorted(tap_shapes)
  missing = [name for name in expected if name not in taps]
  extra = sorted(str(name) for name in taps if name not in tap_shapes)
  problems = []
  if missing:
    problems.append(f'missing {", ".join(missing)}')
  if extra:
    problems.append(f'not declared {", ".join(extra)}')
  kind, _ = signals.parse_reduction(reduction)
  for name in expected:
    if name not in taps:
      continue
    got = tuple(getattr(taps[name], 'shape', ()))
    want = tuple(tap_shapes[name])
    if len(got) != len(want) or got[1:] != want[1:]:
      problems.append(f'{name} has shape {got}, expected {_expected_shape(want)}')
    elif kind == 'proj' and got[-1:] != want[-1:]:
      problems.append(
          f'{name} has {got[-1] if got else 0} channels, expected {want[-1]} '
          f'(reduction={reduction!r} projects the last axis)'
      )
  if problems:
    raise ValueError(
        'taps do not match the tap_shapes the tracker was built with: '
        + '; '.join(problems)
        + f'. Expected the {len(expected)} taps '
        + ', '.join(f'{n} {_expected_shape(tuple(tap_shapes[n]))}' for n in expected)
        + ' (B: any batch size). Build the tracker from the same forward pass that makes the '
        'taps (jax.eval_shape / nnx.eval_shape of it), with the same tap filter.'
    )
