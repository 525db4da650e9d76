"""The dynamics config: every definition choice of DESIGN section 3 is a field here.

``default_config()`` is an ``ml_collections.ConfigDict`` when ml_collections is installed (the
project's configs nest and lock it), else (or with ``plain=True``) a ``Config``, a plain dict
with attribute access, so that the library needs only jax and numpy. ``as_config(dcfg)`` turns
any of a ConfigDict, a mapping, a dataclass or None into a complete ``Config``: the defaults
with the given fields replaced, an unknown field being an error that names it.
"""

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
  import ml_collections

# Default surrogates per metric evaluation: p resolves down to 1/(1 + 39) = 0.025 and z to a
# spread estimated from 39 draws, at well under 0.5% of any model's train-step FLOPs
# (benchmarks/bench_surrogates.py).
SURROGATES = 39


class Config(dict):
  """A dict whose fields are also attributes (``c.window`` is ``c['window']``)."""

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(
          f'dynamics config has no field {name!r}; fields: ' f'{", ".join(sorted(self))}.'
      ) from None

  def __setattr__(self, name: str, value: Any) -> None:
    self[name] = value

  def to_dict(self) -> dict:
    return dict(self)


def _new_config() -> Union['ml_collections.ConfigDict', Config]:
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top  (optional for the library)
  except ImportError:
    return Config()
  return ml_collections.ConfigDict()


def as_config(dcfg: Any = None) -> Config:
  """None | ConfigDict | Mapping | dataclass instance -> a complete ``Config``.

  Fields not given keep their ``default_config()`` values; a field that the defaults do not
  have is a ValueError naming it and the known fields (a typo must not silently keep a default).
  """
  c = default_config(plain=True)
  if dcfg is None:
    return c
  if hasattr(dcfg, 'to_dict') and callable(dcfg.to_dict):  # ml_collections.ConfigDict
    given = dcfg.to_dict()
  elif dataclasses.is_dataclass(dcfg) and not isinstance(dcfg, type):
    given = dataclasses.asdict(dcfg)
  elif isinstance(dcfg, Mapping):
    given = dict(dcfg)
  else:
    raise TypeError(
        f'dynamics config {dcfg!r} must be None, a mapping (dict, ConfigDict) or a '
        'dataclass instance of dynamics fields (see dynamics.default_config()).'
    )
  unknown = sorted(set(given) - set(c))
  if unknown:
    raise ValueError(
        f'Unknown dynamics config field(s) {", ".join(unknown)}; known fields: '
        f'{", ".join(sorted(c))}.'
    )
  c.update(given)
  return c


def default_config(plain: bool = False) -> Union['ml_collections.ConfigDict', Config]:
  """Every field with its default; a ``Config`` when ``plain`` or without ml_collections."""
  c = Config() if plain else _new_config()
  c.enabled = True
  # Tap activation a: f[B, ..., C] -> signal. 'mean' (one number per tap), 'rms', or
  # 'proj:K' (batch/spatial mean, then K fixed random unit projections of the channels).
  c.reduction = 'mean'
  c.projection_seed = 0

  # Step mode: the training forward pass of every step, metrics over the last `window` steps.
  c.step_mode = True
  # 0 = auto: sized to the run by training.fit.fit_to_run, which logs its choice; 256 and
  # 50 on runs long enough for them (>= 512 steps, >= 100 computed windows), else half the run.
  c.window = 0
  c.every_steps = 1  # compute the window metrics every n steps (the series is recorded every step)
  c.volatility_window_steps = 0
  # The state holds the step series of the last `recent_steps` steps only (a ring, so its size
  # does not grow with the run); the host drains them at least that often. 0 = auto:
  # max(window, 256).
  c.recent_steps = 0

  # Probe (epoch) mode: a fixed probe batch in inference mode at the end of every epoch,
  # metrics over the whole history so far (expanding) and over the last `sliding_epochs`.
  c.probe_mode = True
  c.probe_size = 256
  c.probe_split = 'test'  # test | train
  c.sliding_epochs = 24
  c.volatility_window_epochs = 5

  # Integration (DFA, DESIGN 3.2).
  c.dfa_order = 1
  c.dfa_scales = ''  # '' = log-spaced grid below; or explicit, e.g. '4,8,16,32'
  c.dfa_min_scale = 4
  c.dfa_max_divisor = 4  # largest scale = N // dfa_max_divisor
  c.dfa_num_scales = 12  # points of the log grid before de-duplication
  c.integration_method = 'per_layer_mean'  # per_layer_mean | mean_field

  # Metastability (Kuramoto, DESIGN 3.3).
  c.phase_preprocess = 'detrend'  # detrend | demean | diff | bandpass
  # bandpass: the band kept before the Hilbert transform, 'lo,hi' in cycles per sample
  # (0.5 = Nyquist); the default keeps periods of 5 to 50 samples.
  c.phase_band = '0.02,0.2'
  c.phase_edge = 0  # samples dropped at each end of R(t)

  # Stability index and convergence (DESIGN 3.4).
  c.dsi_form = 'product'  # product | linear
  c.dsi_w_integration = 1.0
  c.dsi_w_metastability = 1.0
  c.convergence_rho = 0.25
  c.convergence_patience = 3
  c.convergence_warmup_epochs = 3
  c.convergence_warmup_steps = 0
  c.plateau_delta = 1.0

  # Null models (DESIGN 3.6): every metric evaluation (step window, probe history) also draws
  # `surrogates` surrogates per null method and writes each metric's z-score and p-value
  # (dynamics/<metric>_z, _p; p = (1 + #{null >= value}) / (1 + surrogates)). 0 = off.
  # `surrogate_methods`: which null for which metric (shuffle | phase | phase_joint | iaaft |
  # shift); the DSI null combines the integration and metastability nulls.
  c.surrogates = SURROGATES
  c.surrogate_methods = 'integration=shuffle,synchrony=phase,metastability=phase'

  # Metrics added with dynamics.register_metric (dynamics/registry.py): comma-separated modules
  # imported before the tracker is built, whose import registers them, e.g.
  # 'examples.phase_locking'. The offline analysis imports them again from the run's config.
  c.metric_modules = ''
  return c
