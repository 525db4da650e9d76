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

from dynamics import nulls, signals, tracker as tracker_lib
from training import early_stop as early_stop_lib, optim

DATA_SOURCES = ('synthetic', 'tfds', 'image_folder')
TFDS_NAMES = ('cifar10', 'cifar100')
DTYPES = ('float32', 'bfloat16')
TFDS_IMAGE_SIDE = 32  # CIFAR-10/100


def require(ok: bool, message: str):
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
      text = (
          f'{kind} in {"(" if self.lo_open else "["}{fmt(self.lo)}, {fmt(hi)}'
          f'{")" if self.hi_open else "]"}'
      )
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


def _models():
  """The model registry, imported when a check needs it (analyze.py ablate checks dynamics
  fields only, and should not wait for Flax)."""
  import models  # pylint: disable=g-import-not-at-top

  return models


def _always(config):
  del config
  return True


def _image_side(config) -> Optional[int]:
  """The side of the stored images, where the config alone tells it (not for image folders)."""
  if config.data.source == 'synthetic' or _streaming(config):
    return config.data.image_size  # a streamed split is cropped to it (data/streaming.py)
  if config.data.source == 'tfds':
    return TFDS_IMAGE_SIDE
  return None


def _streaming(config) -> bool:
  return bool(config.data.get('streaming', False))


def _crop_limit(config):
  side = _image_side(config)
  return None if side is None else max(side - 1, 0)


_CROP_NOTE = (
    'pixels of padding before the random crop; below the image side, else a crop '
    'can be all padding'
)


def _has_loader(value, config) -> bool:
  return not value or any(config.model.startswith(p) for p in _models().pretrained_families())


def _loader_text(config) -> str:
  return (
      f"'' for model {config.model!r}, which has no pretrained-weights loader (models with "
      f'one: {", ".join(p + "*" for p in _models().pretrained_families())})'
  )


def _exists(value, config) -> bool:
  del config
  return not value or os.path.exists(value)


def _synthetic(config):
  return config.data.source == 'synthetic'


def _patch_size(config) -> Optional[int]:
  """The patch side of a ViT model (its image side must be a multiple), else None."""
  from models import vit  # pylint: disable=import-outside-toplevel

  variant = vit.VARIANTS.get(config.model)
  return None if variant is None else int(variant.keywords.get('patch_size', 0)) or None


def _fits_patches(value, config) -> bool:
  patch = _patch_size(config)
  side = value or _image_side(config)
  return patch is None or side is None or (side >= patch and side % patch == 0)


def _patch_text(config) -> str:
  patch = _patch_size(config)
  return (
      f'a multiple of {patch}, the patch size of {config.model!r} (else the edge pixels past '
      f"the last whole patch are dropped); 0 keeps the dataset's size, "
      f'{_image_side(config) or "?"}'
  )


def _nesterov_ok(value, config) -> bool:
  return not value or (config.optimizer == 'sgd' and config.momentum > 0)


MIN_IMAGE_SIDE = 8
MAX_DFA_NUM_SCALES = 1024
MAX_SURROGATES = 10_000


def host_memory() -> Optional[int]:
  """Bytes of RAM of this host (None where unknown); tests replace it."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _check_synthetic_size(config):
  """The synthetic dataset is generated in host memory (uint8): refused when it cannot fit."""
  if config.data.source != 'synthetic':
    return
  side = int(config.data.image_size)
  count = int(config.data.train_size) + int(config.data.test_size)
  needed, available = count * side * side * 3, host_memory()
  require(
      not available or needed <= available // 2,
      f'data.image_size={side} with data.train_size + data.test_size = {count} synthetic '
      f'images needs {needed / 1e9:.1f} GB of host memory, this host has '
      f'{(available or 0) / 1e9:.1f} GB (at most half of it is used for data); lower '
      'data.image_size, data.train_size or data.test_size.',
  )


NONNEG_INT = Number(0, integer=True)
POS_INT = Number(1, integer=True)

FIELDS = (  # field, constraint, applies when
    ('model', OneOf(lambda c: _models().names()), _always),
    ('data.source', OneOf(DATA_SOURCES), _always),
    # In memory, a TFDS split is 32 px CIFAR; streamed, any prepared ArrayRecord dataset.
    ('data.name', OneOf(TFDS_NAMES), lambda c: c.data.source == 'tfds' and not _streaming(c)),
    ('data.loader', OneOf(('threads', 'grain')), _streaming),
    ('data.workers', NONNEG_INT, _streaming),
    (
        'data.num_classes',
        Number(2, integer=True, note='a classifier needs two classes'),
        _synthetic,
    ),
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
    (
        'init_checkpoint',
        Rule(lambda v, c: not v or os.path.isfile(v), "'' or the path of a file, not a folder"),
        _always,
    ),
    ('image_size', Number(0, 4096, integer=True, note="0 keeps the dataset's size"), _always),
    (
        'image_size',
        Rule(
            lambda v, c: v == 0 or v >= MIN_IMAGE_SIDE,
            f"0 (the dataset's size) or at least {MIN_IMAGE_SIDE} pixels (smaller images "
            'hold nothing to classify once cropped and strided)',
        ),
        _always,
    ),
    ('image_size', Rule(_fits_patches, _patch_text), _always),
    ('crop_padding', Number(0, _crop_limit, integer=True, note=_CROP_NOTE), _always),
    ('optimizer', OneOf(optim.OPTIMIZERS), _always),
    ('schedule', OneOf(optim.SCHEDULES), _always),
    ('learning_rate', Number(0, lo_open=True), _always),
    ('momentum', Number(0, 1, hi_open=True, note='0 = plain SGD'), _always),
    (
        'nesterov',
        Rule(
            _nesterov_ok,
            "False, unless optimizer='sgd' with momentum > 0 (Nesterov momentum needs "
            'momentum; with momentum=0, or another optimizer, it would change nothing)',
        ),
        _always,
    ),
    ('weight_decay', Number(0), _always),
    ('warmup_epochs', Number(0), _always),
    ('label_smoothing', Number(0, 1, hi_open=True, note='0 = hard labels'), _always),
    ('grad_clip_norm', Number(0, note='0 disables clipping'), _always),
    ('num_epochs', NONNEG_INT, _always),
    ('num_train_steps', Number(-1, integer=True, note='-1 or 0: num_epochs decides'), _always),
    ('log_every_steps', POS_INT, _always),
    ('checkpoint_every_steps', POS_INT, _always),
    ('keep_checkpoints', POS_INT, _always),
    ('early_stop.signal', OneOf(early_stop_lib.SIGNALS), early_stop_lib.enabled),
    ('early_stop.history', OneOf(early_stop_lib.HISTORIES), early_stop_lib.enabled),
    ('early_stop.action', OneOf(early_stop_lib.ACTIONS), early_stop_lib.enabled),
    ('early_stop.min_epochs', NONNEG_INT, early_stop_lib.enabled),
    (
        'early_stop.decay_factor',
        Number(0, 1, lo_open=True, hi_open=True, note='the learning rate is multiplied by it'),
        lambda c: early_stop_lib.enabled(c) and c.early_stop.action == 'decay',
    ),
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
    ('recent_steps', NONNEG_INT, _step_mode),
    ('probe_size', POS_INT, _probe_mode),
    ('probe_split', OneOf(('train', 'test')), _probe_mode),
    ('sliding_epochs', Number(3, integer=True), _probe_mode),
    ('volatility_window_epochs', Number(2, integer=True), _probe_mode),
    ('dfa_order', POS_INT, _always),
    ('dfa_min_scale', Number(2, integer=True), _always),
    ('dfa_max_divisor', POS_INT, _always),
    (
        'dfa_num_scales',
        Number(
            3,
            MAX_DFA_NUM_SCALES,
            integer=True,
            note='points of the log-spaced DFA grid; the fit needs 3, and more points than '
            'distinct window sizes add nothing',
        ),
        lambda dcfg: not dcfg.dfa_scales,
    ),
    ('integration_method', OneOf(('per_layer_mean', 'mean_field')), _always),
    ('phase_preprocess', OneOf(('detrend', 'demean', 'diff', 'bandpass')), _always),
    ('dsi_form', OneOf(('product', 'linear')), _always),
    ('dsi_w_integration', Number(0), _always),
    ('dsi_w_metastability', Number(0), _always),
    ('convergence_rho', Number(0, 1, lo_open=True, hi_open=True), _always),
    ('convergence_patience', POS_INT, _always),
    ('convergence_warmup_epochs', NONNEG_INT, _always),
    ('convergence_warmup_steps', NONNEG_INT, _always),
    ('plateau_delta', Number(0), _always),
    (
        'surrogates',
        Number(
            0,
            MAX_SURROGATES,
            integer=True,
            note='surrogates per metric evaluation; 0 = no null models; p resolves to '
            f'1/(1 + surrogates), 1e-4 at {MAX_SURROGATES - 1}, and every one is drawn each '
            'evaluation',
        ),
        _always,
    ),
    (
        'surrogates',
        Rule(
            lambda v, c: v != 1,
            '0 (no null models) or at least 2 (with 1 surrogate every p is 0.5 and no z-score '
            'can be formed)',
        ),
        _always,
    ),
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
      raise ValueError(
          f'{prefix}{field}={value!r} is not allowed; allowed: ' f'{constraint.allowed(config)}.'
      )


def validate_config(config, num_devices: int, num_processes: int = 1):
  """Raises ValueError with the offending field for any config this run cannot honour."""
  check_fields(FIELDS, config)
  _check_synthetic_size(config)
  require(
      config.num_epochs > 0 or config.num_train_steps > 0,
      'Set num_epochs > 0 (or num_train_steps > 0).',
  )
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    require(
        value > 0 and value % num_devices == 0,
        f'{field}={value} must be a positive multiple of the device count '
        f'({num_devices}); the global batch is split evenly across devices.',
    )
    require(
        value % num_processes == 0,
        f'{field}={value} must be divisible by the process count ({num_processes}).',
    )
  if config.dynamics.enabled:
    validate_dynamics(config.dynamics, num_devices)
  if early_stop_lib.enabled(config):
    mode = 'step_mode' if config.early_stop.signal == 'step' else 'probe_mode'
    require(
        config.dynamics.enabled and config.dynamics[mode],
        f'early_stop.enabled with early_stop.signal={config.early_stop.signal!r} needs '
        f'dynamics.enabled=True and dynamics.{mode}=True (the signal comes from there); '
        f'turn them on or set early_stop.enabled=False.',
    )


def validate_data(config, data):
  """The checks that need the data's facts (data/facts.py: an image folder tells its size,
  classes and image shape only once loaded); still before anything is compiled."""
  side = min(data.image_shape[:2])
  require(
      config.crop_padding < side,
      f'crop_padding={config.crop_padding} is not allowed for {side}x{side} images; '
      f'allowed: an integer in [0, {side - 1}] ({_CROP_NOTE}).',
  )
  require(
      data.num_classes >= 2,
      f'The dataset {data.name!r} has {data.num_classes} class(es) '
      f'({", ".join(data.class_names)}); a classifier needs at least two.',
  )
  if config.dynamics.enabled and config.dynamics.probe_mode:
    split = config.dynamics.probe_split
    size = data.test_size if split == 'test' else data.train_size
    require(
        config.dynamics.probe_size <= size,
        f'dynamics.probe_size={config.dynamics.probe_size} is larger than the {split} split '
        f'({size} images); lower dynamics.probe_size or use the other dynamics.probe_split.',
    )


def validate_dynamics(dcfg, num_devices: int):
  check_fields(DYNAMICS_FIELDS, dcfg, prefix='dynamics.')
  signals.parse_reduction(dcfg.reduction)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  nulls.parse_methods(dcfg.surrogate_methods)
  smallest = (
      min(tracker_lib.resolve_scales(dcfg, 2**31, strict=True))
      if dcfg.dfa_scales
      else dcfg.dfa_min_scale
  )
  require(
      smallest >= dcfg.dfa_order + 2,
      f'dynamics.dfa_order={dcfg.dfa_order} needs DFA scales >= {dcfg.dfa_order + 2} (more '
      f'points per window than polynomial coefficients); the smallest is {smallest} '
      '(dynamics.dfa_scales / dfa_min_scale).',
  )
  require(dcfg.phase_edge >= 0, f'dynamics.phase_edge={dcfg.phase_edge} must be >= 0.')
  require(
      dcfg.volatility_window_steps == tracker_lib.AUTO or dcfg.volatility_window_steps >= 2,
      f'dynamics.volatility_window_steps={dcfg.volatility_window_steps} must be >= 2, or 0 '
      '(auto).',
  )
  if dcfg.step_mode:
    # window = 0 (auto) is sized to the run by fit_to_run, once the run's length is known.
    require(dcfg.window >= 0, f'dynamics.window={dcfg.window} must be >= 1, or 0 (auto).')
    if dcfg.window:
      minimum = 3 + (1 if spec.phase_preprocess == 'diff' else 0)
      require(
          dcfg.window >= minimum,
          f'dynamics.window={dcfg.window} is too short for the phase metrics (they need '
          f'{minimum} samples); allowed: >= {minimum}, or 0 (auto).',
      )
      require(
          dcfg.window >= tracker_lib.min_phase_samples(spec),
          f'dynamics.phase_edge={dcfg.phase_edge} drops {2 * dcfg.phase_edge} of the '
          f'{dcfg.window} samples of dynamics.window, leaving fewer than the 3 the phase '
          f'metrics need; allowed: 0 .. {(dcfg.window - minimum) // 2}.',
      )
      try:
        tracker_lib.resolve_scales(dcfg, dcfg.window, strict=True)
      except ValueError as e:
        raise ValueError(f'dynamics.window={dcfg.window} does not fit the DFA scales: {e}') from e
  if dcfg.probe_mode:
    require(
        dcfg.probe_size % num_devices == 0,
        f'dynamics.probe_size={dcfg.probe_size} must be a positive multiple of the '
        f'device count ({num_devices}).',
    )
