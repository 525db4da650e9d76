"""Config checks that run before anything expensive, each naming the field, its value and what is
allowed.

The range of every field is one row of FIELDS (or DYNAMICS_FIELDS, relative to
`config.dynamics`): field -> constraint -> when it applies. A constraint knows its own
"allowed" text, so the error and the rule cannot drift apart. Relations between fields (batch
size and device count, DFA scales and window) follow the table as code.
"""

import math
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import models
from dynamics import signals, tracker as tracker_lib
from training import optim

DATA_SOURCES = ('synthetic', 'tfds', 'image_folder')
TFDS_NAMES = ('cifar10', 'cifar100')
DTYPES = ('float32', 'bfloat16')
TFDS_IMAGE_SIDE = 32  # CIFAR-10/100


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


# ----------------------------------------------------------------------------------------------
# Constraints: check(value, config) -> bool, and allowed(config) -> text


class Number(NamedTuple):
  """A finite number (an integer if `integer`) in [lo, hi] (or (lo, ...) / (..., hi) when
  open); hi may be a function of the config."""
  lo: Optional[float] = None
  hi: Any = None  # None, a number or config -> number
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False
  note: str = ''

  def _hi(self, config):
    return self.hi(config) if callable(self.hi) else self.hi

  def check(self, value, config) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.integer and not float(value).is_integer():
      return False
    if not math.isfinite(value):
      return False
    hi = self._hi(config)
    if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
      return False
    return hi is None or (value < hi if self.hi_open else value <= hi)

  def allowed(self, config) -> str:
    kind = 'an integer' if self.integer else 'a finite number'
    hi = self._hi(config)
    fmt = lambda v: f'{v:g}' if isinstance(v, float) else str(v)
    if self.lo is not None and hi is not None:
      text = (f'{kind} in {"(" if self.lo_open else "["}{fmt(self.lo)}, {fmt(hi)}'
              f'{")" if self.hi_open else "]"}')
    elif self.lo is not None:
      text = f'{kind} {">" if self.lo_open else ">="} {fmt(self.lo)}'
    elif hi is not None:
      text = f'{kind} {"<" if self.hi_open else "<="} {fmt(hi)}'
    else:
      text = kind
    return text + (f' ({self.note})' if self.note else '')


class OneOf(NamedTuple):
  options: Any  # a sequence, or config -> sequence

  def _options(self, config) -> Sequence[str]:
    return self.options(config) if callable(self.options) else self.options

  def check(self, value, config) -> bool:
    return value in self._options(config)

  def allowed(self, config) -> str:
    return ', '.join(map(str, self._options(config)))


class Rule(NamedTuple):
  """Anything else: `ok(value, config)`, described by `text` (a string or config -> string)."""
  ok: Callable[[Any, Any], bool]
  text: Any

  def check(self, value, config) -> bool:
    return self.ok(value, config)

  def allowed(self, config) -> str:
    return self.text(config) if callable(self.text) else self.text


def _always(config):
  del config
  return True


def _image_side(config) -> Optional[int]:
  """The side of the stored images, where the config alone tells it (not for image folders)."""
  if config.data.source == 'synthetic':
    return config.data.image_size
  if config.data.source == 'tfds':
    return TFDS_IMAGE_SIDE
  return None


def _crop_limit(config):
  side = _image_side(config)
  return None if side is None else max(side - 1, 0)


_CROP_NOTE = ('pixels of padding before the random crop; below the image side, else a crop '
              'can be all padding')


def _has_loader(value, config) -> bool:
  return not value or any(config.model.startswith(p) for p in models.pretrained_families())


def _loader_text(config) -> str:
  return (f"'' for model {config.model!r}, which has no pretrained-weights loader (models with "
          f'one: {", ".join(p + "*" for p in models.pretrained_families())})')


def _exists(value, config) -> bool:
  del config
  return not value or os.path.exists(value)


def _synthetic(config):
  return config.data.source == 'synthetic'


NONNEG_INT = Number(0, integer=True)
POS_INT = Number(1, integer=True)

FIELDS = (  # field, constraint, applies when
    ('model', OneOf(lambda c: models.names()), _always),
    ('data.source', OneOf(DATA_SOURCES), _always),
    ('data.name', OneOf(TFDS_NAMES), lambda c: c.data.source == 'tfds'),
    ('data.num_classes', Number(2, integer=True, note='a classifier needs two classes'),
     _synthetic),
    ('data.train_size', POS_INT, _synthetic),
    ('data.test_size', POS_INT, _synthetic),
    ('data.image_size', POS_INT, _synthetic),
    ('data.train_subset', NONNEG_INT, _always),
    ('data.test_subset', NONNEG_INT, _always),
    ('data.seed', Number(0, 2**32 - 1, integer=True), _always),
    ('dtype', OneOf(DTYPES), _always),
    ('seed', Number(0, 2**32 - 1, integer=True), _always),
    ('model_args.width', Number(0, integer=True, note="0 keeps the model's own"), _always),
    ('model_args.width_mult', Number(0, note="0 keeps the model's own"), _always),
    ('model_args.growth', Number(0, integer=True, note="0 keeps the model's own"), _always),
    ('init_checkpoint', Rule(_has_loader, _loader_text), _always),
    ('init_checkpoint', Rule(_exists, "'' or the path of an existing file"), _always),
    ('image_size', Number(0, 4096, integer=True, note="0 keeps the dataset's size"), _always),
    ('crop_padding', Number(0, _crop_limit, integer=True, note=_CROP_NOTE), _always),
    ('optimizer', OneOf(optim.OPTIMIZERS), _always),
    ('schedule', OneOf(optim.SCHEDULES), _always),
    ('learning_rate', Number(0, lo_open=True), _always),
    ('momentum', Number(0, 1, hi_open=True, note='0 = plain SGD'), _always),
    ('weight_decay', Number(0), _always),
    ('warmup_epochs', Number(0), _always),
    ('label_smoothing', Number(0, 1, hi_open=True, note='0 = hard labels'), _always),
    ('grad_clip_norm', Number(0, note='0 disables clipping'), _always),
    ('num_epochs', NONNEG_INT, _always),
    ('num_train_steps', Number(-1, integer=True, note='-1 or 0: num_epochs decides'), _always),
    ('log_every_steps', POS_INT, _always),
    ('checkpoint_every_steps', POS_INT, _always),
    ('keep_checkpoints', POS_INT, _always),
)


def _step_mode(dcfg):
  return dcfg.step_mode


def _probe_mode(dcfg):
  return dcfg.probe_mode


# Relative to config.dynamics; checked when dynamics.enabled. (dynamics.window, phase_edge and
# volatility_window_steps depend on the run's length: see validate_dynamics.)
DYNAMICS_FIELDS = (
    ('projection_seed', Number(0, 2**32 - 1, integer=True), _always),
    ('every_steps', POS_INT, _step_mode),
    ('probe_size', POS_INT, _probe_mode),
    ('probe_split', OneOf(('train', 'test')), _probe_mode),
    ('sliding_epochs', Number(3, integer=True), _probe_mode),
    ('volatility_window_epochs', Number(2, integer=True), _probe_mode),
    ('dfa_order', POS_INT, _always),
    ('dfa_min_scale', Number(2, integer=True), _always),
    ('dfa_max_divisor', POS_INT, _always),
    ('dfa_num_scales', POS_INT, _always),
    ('integration_method', OneOf(('per_layer_mean', 'mean_field')), _always),
    ('phase_preprocess', OneOf(('detrend', 'demean', 'diff')), _always),
    ('dsi_form', OneOf(('product', 'linear')), _always),
    ('dsi_w_integration', Number(0), _always),
    ('dsi_w_metastability', Number(0), _always),
    ('convergence_rho', Number(0, 1, lo_open=True, hi_open=True), _always),
    ('convergence_patience', POS_INT, _always),
    ('convergence_warmup_epochs', NONNEG_INT, _always),
    ('convergence_warmup_steps', NONNEG_INT, _always),
    ('plateau_delta', Number(0), _always),
)


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


def check_fields(table, config, prefix: str = ''):
  """Raises ValueError for the first row of `table` that `config` breaks, naming the field
  (with `prefix`), its value and the allowed range."""
  for field, constraint, applies in table:
    if not applies(config):
      continue
    try:
      value = _get(config, field)
    except (KeyError, AttributeError):
      continue  # a config from before the field existed: its default applies
    if not constraint.check(value, config):
      raise ValueError(f'{prefix}{field}={value!r} is not allowed; allowed: '
                       f'{constraint.allowed(config)}.')


def validate_config(config, num_devices: int, num_processes: int = 1):
  """Raises ValueError with the offending field for any config this run cannot honour."""
  check_fields(FIELDS, config)
  _require(config.num_epochs > 0 or config.num_train_steps > 0,
           'Set num_epochs > 0 (or num_train_steps > 0).')
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    _require(value > 0 and value % num_devices == 0,
             f'{field}={value} must be a positive multiple of the device count '
             f'({num_devices}); the global batch is split evenly across devices.')
    _require(value % num_processes == 0,
             f'{field}={value} must be divisible by the process count ({num_processes}).')
  if config.dynamics.enabled:
    validate_dynamics(config.dynamics, num_devices)


def validate_data(config, dataset):
  """The checks that need the loaded data (image folders tell their size and classes only
  then); still before anything is compiled."""
  side = min(dataset.train_images.shape[1:3])
  _require(config.crop_padding < side,
           f'crop_padding={config.crop_padding} is not allowed for {side}x{side} images; '
           f'allowed: an integer in [0, {side - 1}] ({_CROP_NOTE}).')
  _require(dataset.num_classes >= 2,
           f'The dataset {dataset.name!r} has {dataset.num_classes} class(es) '
           f'({", ".join(dataset.class_names)}); a classifier needs at least two.')


def validate_dynamics(dcfg, num_devices: int):
  check_fields(DYNAMICS_FIELDS, dcfg, prefix='dynamics.')
  signals.parse_reduction(dcfg.reduction)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  smallest = (min(tracker_lib.resolve_scales(dcfg, 2**31, strict=True)) if dcfg.dfa_scales
              else dcfg.dfa_min_scale)
  _require(smallest >= dcfg.dfa_order + 2,
           f'dynamics.dfa_order={dcfg.dfa_order} needs DFA scales >= {dcfg.dfa_order + 2} (more '
           f'points per window than polynomial coefficients); the smallest is {smallest} '
           '(dynamics.dfa_scales / dfa_min_scale).')
  _require(dcfg.phase_edge >= 0, f'dynamics.phase_edge={dcfg.phase_edge} must be >= 0.')
  _require(dcfg.volatility_window_steps >= 2 and dcfg.volatility_window_epochs >= 2,
           'dynamics.volatility_window_steps and volatility_window_epochs must be >= 2.')
  if dcfg.step_mode:
    _require(dcfg.window >= tracker_lib.min_phase_samples(spec),
             f'dynamics.window={dcfg.window} is too short for the phase metrics.')
    try:
      tracker_lib.resolve_scales(dcfg, dcfg.window, strict=True)
    except ValueError as e:
      raise ValueError(f'dynamics.window={dcfg.window} does not fit the DFA scales: {e}') from e
  if dcfg.probe_mode:
    _require(dcfg.probe_size % num_devices == 0,
             f'dynamics.probe_size={dcfg.probe_size} must be a positive multiple of the '
             f'device count ({num_devices}).')
