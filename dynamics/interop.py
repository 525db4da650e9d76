"""The tracker's step outputs in clu.metrics / nnx.Metric loops, NaN before the first window out.

``Tracker.record_step`` returns ``{'dynamics/<metric>': f32[]}`` every step; a metric is NaN
at the steps where it is not computed (before the first full window, between ``every_steps``,
before the volatility window fills). A plain ``clu.metrics.Average`` or ``nnx.metrics.Average``
of those values is NaN for good (nnx's mask multiplies, and NaN * 0 is NaN). The averages here
count only the finite values:

* ``StepAverage``: a pure-JAX pytree in the clu.metrics shape (``empty``,
  ``from_model_output``, ``merge``, ``compute``, ``reset``) over every float output of
  ``record_step`` at once; it can be returned from a jitted step and merged on the host.
  ``compute()`` leaves out a metric that has nothing yet instead of returning NaN.
* ``clu_average(name)``: a ``clu.metrics.Average`` subclass for one output, for a
  ``clu.metrics.Collection`` (imports clu when called).
* ``nnx_average(name)``: an ``nnx.metrics.Average`` subclass for one output, for an
  ``nnx.MultiMetric`` (imports flax when called).

The library itself imports neither clu nor flax.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

# Not averaged: an index (the step at which the convergence signal fired, -1 before), not a
# per-step value; read it from the last step's output.
NOT_AVERAGED = ('dynamics/convergence_step',)


def _finite_sum_count(value: Any) -> tuple[jax.Array, jax.Array]:
  value = jnp.asarray(value, jnp.float32)
  finite = jnp.isfinite(value)
  return jnp.where(finite, value, 0.0).sum(), finite.sum().astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepAverage:
  """Per output name: the sum and the number of its finite values so far.

  total, count: {name: f32[]}, {name: i32[]} (one more leading axis per merge under vmap).
  """

  total: Dict[str, jax.Array]
  count: Dict[str, jax.Array]

  @classmethod
  def empty(cls) -> 'StepAverage':
    """No names, nothing counted: merging anything into it gives that thing."""
    return cls(total={}, count={})

  @classmethod
  def from_model_output(cls, **outputs: Any) -> 'StepAverage':
    """One step's ``record_step`` outputs (keyword arguments; other keys are ignored)."""
    return cls.from_step_output(outputs)

  @classmethod
  def from_step_output(cls, outputs: Mapping[str, Any]) -> 'StepAverage':
    """``record_step``'s output dict -> the finite values of its ``dynamics/`` floats."""
    total, count = {}, {}
    for name, value in outputs.items():
      if not str(name).startswith('dynamics/') or name in NOT_AVERAGED:
        continue
      if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        continue
      total[name], count[name] = _finite_sum_count(value)
    return cls(total=total, count=count)

  def merge(self, other: 'StepAverage') -> 'StepAverage':
    """The sums and counts of both; a name only one side has keeps that side's."""
    total, count = dict(self.total), dict(self.count)
    for name in other.total:
      if name in total:
        total[name] = total[name] + other.total[name]
        count[name] = count[name] + other.count[name]
      else:
        total[name], count[name] = other.total[name], other.count[name]
    return StepAverage(total=total, count=count)

  def reset(self) -> 'StepAverage':
    """The same names with nothing counted (a new value; this one is unchanged)."""
    return StepAverage(
        total={k: jnp.zeros_like(v) for k, v in self.total.items()},
        count={k: jnp.zeros_like(v) for k, v in self.count.items()},
    )

  def compute(self) -> Dict[str, float]:
    """Host side: {name: mean of its finite values} for the names with at least one; a
    name with none yet (before the first full window) is left out, not NaN."""
    out = {}
    for name in sorted(self.total):
      count = int(np.asarray(self.count[name]))
      if count > 0:
        out[name] = float(np.asarray(self.total[name])) / count
    return out

  def undefined(self) -> list[str]:
    """Host side: the names that have no finite value yet (what ``compute`` leaves out)."""
    return [name for name in sorted(self.count) if int(np.asarray(self.count[name])) == 0]


def clu_average(name: str) -> type:
  """A ``clu.metrics.Average`` of the output ``name`` (e.g. 'dynamics/dsi') over its finite
  values, for a ``clu.metrics.Collection``:

      @flax.struct.dataclass
      class Metrics(clu.metrics.Collection):
        loss: clu.metrics.Average.from_output('loss')
        dsi: dynamics.clu_average('dynamics/dsi')

  ``compute()`` is clu's total / count: NaN while ``count`` is 0 (nothing finite yet).
  """
  import flax  # pylint: disable=g-import-not-at-top  (optional: only this adapter needs it)
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class FiniteAverage(clu_metrics.Average):
    """Average of the finite values of one record_step output."""

    @classmethod
    def from_model_output(cls, **outputs: Any) -> 'FiniteAverage':
      total, count = _finite_sum_count(outputs[name])
      return cls(total=total, count=count)

  FiniteAverage.__name__ = FiniteAverage.__qualname__ = f'FiniteAverage[{name}]'
  return FiniteAverage


def nnx_average(name: str) -> Any:
  """An ``nnx.metrics.Average`` of the output ``name`` over its finite values, e.g.
  ``nnx.MultiMetric(loss=nnx.metrics.Average('loss'), dsi=dynamics.nnx_average('dynamics/dsi'))``
  and ``metrics.update(loss=loss, **dyn_outputs)``; ``reset()`` and ``compute()`` as nnx's
  (NaN while nothing finite has been seen)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top  (optional)

  class FiniteAverage(nnx.metrics.Average):
    """Average of the finite values of one record_step output."""

    def update(self, **kwargs: Any) -> None:
      if self.argname not in kwargs:
        raise TypeError(
            f'Expected keyword argument {self.argname!r} (a record_step output); got '
            f'{", ".join(sorted(kwargs)) or "none"}.'
        )
      total, count = _finite_sum_count(kwargs[self.argname])
      self.total[...] += total
      self.count[...] += count

  return FiniteAverage(name)
