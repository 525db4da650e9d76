"""Config checks that run before anything expensive, each naming the field, its value and what is
allowed.

The range of every field is one row of FIELDS (or DYNAMICS_FIELDS, relative to
`config.dynamics`): field -> constraint -> when it applies. A constraint knows its own
"allowed" text, so the error and the rule cannot drift apart. Relations between fields (batch
size and device count, DFA scales and window) follow the table as code.
"""

import math
import os
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import models
from dynamics import nulls, signals, tracker as tracker_lib
from training import early_stop as early_stop_lib, optim

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


_CROP_NOTE = (
    'pixels of padding before the random crop; below the image side, else a crop '
    'can be all padding'
)


def _has_loader(value, config) -> bool:
  return not value or any(config.model.startswith(p) for p in models.pretrained_families())


def _loader_text(config) -> str:
  return (
      f"'' for model {config.model!r}, which has no pretrained-weights loader (models with "
      f'one: {", ".join(p + "*" for p in models.pretrained_families())})'
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
  _require(
      not available or needed <= available // 2,
      f'data.image_size={side} with data.train_size + data.test_size = {count} synthetic '
      f'images needs {needed / 1e9:.1f} GB of host memory, this host has '
      f'{(available or 0) / 1e9:.1f} GB (at most half of it is used for data); lower '
      'data.image_size, data.train_size or data.test_size.',
  )


NONNEG_INT = Number(0, integer=True)
POS_INT = Number(1, integer=True)

FIELDS = (  # field, constraint, applies when
    ('model', OneOf(lambda c: models.names()), _always),
    ('data.source', OneOf(DATA_SOURCES), _always),
    ('data.name', OneOf(TFDS_NAMES), lambda c: c.data.source == 'tfds'),
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
  _require(
      config.num_epochs > 0 or config.num_train_steps > 0,
      'Set num_epochs > 0 (or num_train_steps > 0).',
  )
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    _require(
        value > 0 and value % num_devices == 0,
        f'{field}={value} must be a positive multiple of the device count '
        f'({num_devices}); the global batch is split evenly across devices.',
    )
    _require(
        value % num_processes == 0,
        f'{field}={value} must be divisible by the process count ({num_processes}).',
    )
  if config.dynamics.enabled:
    validate_dynamics(config.dynamics, num_devices)
  if early_stop_lib.enabled(config):
    mode = 'step_mode' if config.early_stop.signal == 'step' else 'probe_mode'
    _require(
        config.dynamics.enabled and config.dynamics[mode],
        f'early_stop.enabled with early_stop.signal={config.early_stop.signal!r} needs '
        f'dynamics.enabled=True and dynamics.{mode}=True (the signal comes from there); '
        f'turn them on or set early_stop.enabled=False.',
    )


def validate_data(config, dataset):
  """The checks that need the loaded data (image folders tell their size and classes only
  then); still before anything is compiled."""
  side = min(dataset.train_images.shape[1:3])
  _require(
      config.crop_padding < side,
      f'crop_padding={config.crop_padding} is not allowed for {side}x{side} images; '
      f'allowed: an integer in [0, {side - 1}] ({_CROP_NOTE}).',
  )
  _require(
      dataset.num_classes >= 2,
      f'The dataset {dataset.name!r} has {dataset.num_classes} class(es) '
      f'({", ".join(dataset.class_names)}); a classifier needs at least two.',
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
  _require(
      smallest >= dcfg.dfa_order + 2,
      f'dynamics.dfa_order={dcfg.dfa_order} needs DFA scales >= {dcfg.dfa_order + 2} (more '
      f'points per window than polynomial coefficients); the smallest is {smallest} '
      '(dynamics.dfa_scales / dfa_min_scale).',
  )
  _require(dcfg.phase_edge >= 0, f'dynamics.phase_edge={dcfg.phase_edge} must be >= 0.')
  _require(
      dcfg.volatility_window_steps == AUTO or dcfg.volatility_window_steps >= 2,
      f'dynamics.volatility_window_steps={dcfg.volatility_window_steps} must be >= 2, or 0 '
      '(auto).',
  )
  if dcfg.step_mode:
    # window = 0 (auto) is sized to the run by fit_to_run, once the run's length is known.
    _require(dcfg.window >= 0, f'dynamics.window={dcfg.window} must be >= 1, or 0 (auto).')
    if dcfg.window:
      minimum = 3 + (1 if spec.phase_preprocess == 'diff' else 0)
      _require(
          dcfg.window >= minimum,
          f'dynamics.window={dcfg.window} is too short for the phase metrics (they need '
          f'{minimum} samples); allowed: >= {minimum}, or 0 (auto).',
      )
      _require(
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
    _require(
        dcfg.probe_size % num_devices == 0,
        f'dynamics.probe_size={dcfg.probe_size} must be a positive multiple of the '
        f'device count ({num_devices}).',
    )


# --- Run length against what each metric needs ---------------------------------------------
# Kept apart from the field checks above: these need the run's length (steps, epochs), which
# depends on the dataset size, so they run once that is known (from the config before loading,
# else right after loading) and always before anything is compiled.

AUTO = tracker_lib.AUTO  # dynamics.window / volatility_window_steps: size the field to the run
AUTO_DEFAULTS = tracker_lib.AUTO_DEFAULTS
CIFAR_TRAIN_SIZE = 50_000  # CIFAR-10 and CIFAR-100 alike


class RunFit(NamedTuple):
  """What fit_to_run decided: the config to run (every `auto` field resolved), the choices it
  made (info lines) and what the run will not compute (warning lines)."""

  config: Any
  notes: List[str]
  warnings: List[str]


def known_train_size(config) -> Optional[int]:
  """Training examples the run will see, from the config alone; None if only loading knows
  (an image folder without data.train_subset)."""
  if config.data.train_subset > 0:
    return int(config.data.train_subset)
  if config.data.source == 'synthetic':
    return int(config.data.train_size)
  if config.data.source == 'tfds' and config.data.name in TFDS_NAMES:
    return CIFAR_TRAIN_SIZE
  return None


def run_length(config, train_size: int) -> Tuple[int, int]:
  """(total_steps, steps_per_epoch) exactly as the loop computes them."""
  steps_per_epoch = max(train_size // config.batch_size, 1)
  total = (
      config.num_train_steps if config.num_train_steps > 0 else steps_per_epoch * config.num_epochs
  )
  return total, steps_per_epoch


min_dfa_length = tracker_lib.min_dfa_length


def _scales_text(dcfg) -> str:
  if dcfg.dfa_scales:
    return f'dynamics.dfa_scales={dcfg.dfa_scales!r}'
  return (
      f'3 DFA scales from dynamics.dfa_min_scale={dcfg.dfa_min_scale} to '
      f'N // dynamics.dfa_max_divisor={dcfg.dfa_max_divisor}'
  )


def _short_scales(dcfg) -> bool:
  """Whether the DFA grid already starts as short as the short-run configs' (3 .. N//2)."""
  return not dcfg.dfa_scales and dcfg.dfa_min_scale <= 3 and dcfg.dfa_max_divisor <= 2


def fit_to_run(config, total_steps: int, steps_per_epoch: int) -> RunFit:
  """Compares the run's length with what every dynamics metric needs.

  Resolves the `auto` (0) fields to the run: dynamics.window = 256 when the run has at least
  512 steps, else half the run (never below the shortest window the DFA scales and the phase
  metrics allow); volatility_window_steps = 50 when at least 100 windows are computed, else half
  of them. An explicit window or volatility window longer than the run, or a phase_edge that
  leaves fewer than 3 samples of the window, raises ValueError naming the field, the value and
  the allowed range. What the run cannot compute with its settings (epoch history too short for
  the DFA scales, volatility or convergence that cannot be reached) is returned as warnings
  with the numbers and the fix. The config is copied, never changed in place. Call it once,
  on the config as given: a window that auto set above a run too short for any window would
  read as an explicit one the second time.
  """
  total, epochs = total_steps, math.ceil(total_steps / steps_per_epoch)
  config = config.copy_and_resolve_references()
  dcfg = config.dynamics
  notes, warnings = [], []
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.warmup_epochs > 0 and warmup >= total:
    warnings.append(
        f'warmup_epochs={config.warmup_epochs:g} is {warmup} steps of warm-up but the run has '
        f'{total}: the warm-up is cut to {max(total - 1, 0)} steps, so the learning rate '
        'reaches its peak only at the last step. Lower warmup_epochs (at most '
        f'{(total - 1) / steps_per_epoch:.3g} here) or train longer.'
    )
  if not dcfg.enabled:
    return RunFit(config, notes, warnings)
  if 2 <= dcfg.surrogates < 19:
    warnings.append(
        f'dynamics.surrogates={dcfg.surrogates}: the smallest p-value it can give is '
        f'1/{dcfg.surrogates + 1} = {1 / (dcfg.surrogates + 1):.3f}; 19 or more are needed '
        'for a p below 0.05.'
    )
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  phase_min = tracker_lib.min_phase_samples(spec)
  dfa_min = min_dfa_length(dcfg)
  diff = 1 if spec.phase_preprocess == 'diff' else 0
  run = f'the run has {total} steps ({epochs} epoch(s) of {steps_per_epoch})'
  if dcfg.step_mode:
    needed = max(dfa_min or 0, 3 + diff)  # the shortest window with every metric
    with config.unlocked():
      _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings)
    window = int(dcfg.window)
    _require(
        phase_min <= window,
        f'dynamics.phase_edge={dcfg.phase_edge} drops {2 * dcfg.phase_edge} of the '
        f'{window} samples of the step window (dynamics.window), leaving fewer than the 3 '
        f'the phase metrics need; allowed: 0 .. {max((window - 3 - diff) // 2, 0)}.',
    )
    computed = tracker_lib.computed_windows(total, window, int(dcfg.every_steps))
    if computed == 0 and total >= window and dcfg.every_steps > 1:
      raise ValueError(
          f'dynamics.every_steps={dcfg.every_steps} but {run} and a step window of {window}: '
          'no step from the first full window on is a multiple of it, so no step-mode metric '
          f'would ever be computed; allowed here: 1 .. {total - window + 1} (or any value '
          f'with a multiple between {window} and {total}).'
      )
    with config.unlocked():
      _fit_volatility(dcfg, computed, window, notes, warnings)
    vol = int(dcfg.volatility_window_steps)
    if computed >= vol:
      first = window + (vol - 1) * int(dcfg.every_steps)  # 1-based step of the first volatility
      left = computed - vol + 1
      if left < dcfg.convergence_patience:
        warnings.append(
            f'step-mode convergence signal: {left} volatility value(s) (from step {first} on) '
            f'but dynamics.convergence_patience={dcfg.convergence_patience}; it cannot fire. '
            'Lower the patience or train longer.'
        )
      if dcfg.convergence_warmup_steps >= total:
        warnings.append(
            f'dynamics.convergence_warmup_steps={dcfg.convergence_warmup_steps} but {run}: the '
            'step-mode convergence signal cannot fire; lower it below the run length.'
        )
  if dcfg.probe_mode:
    _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings)
  return RunFit(config, notes, warnings)


def _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings):
  """Resolves dynamics.window = auto, or checks an explicit one against the run."""
  if dfa_min is None:
    fields = (
        'dynamics.dfa_scales'
        if dcfg.dfa_scales
        else 'dynamics.dfa_min_scale, dfa_max_divisor or dfa_num_scales'
    )
    raise ValueError(f'{_scales_text(dcfg)} are not defined on any series length; fix {fields}.')
  if dcfg.window == AUTO:
    dcfg.window = tracker_lib.auto_window(dcfg, total)
    if total < needed:
      warnings.append(
          f'step-mode metrics need a window of at least {needed} steps ({_scales_text(dcfg)}) '
          f'but {run}: they will not be computed (the signals are still saved). Train at '
          f'least {needed} steps (num_train_steps or num_epochs)'
          + (
              '.'
              if _short_scales(dcfg)
              else ', or for shorter runs use '
              '--config.dynamics.dfa_min_scale=3 --config.dynamics.dfa_max_divisor=2.'
          )
      )
    else:
      standard = AUTO_DEFAULTS['window']
      notes.append(
          f'dynamics.window=auto -> {dcfg.window} steps'
          + (
              ''
              if dcfg.window == standard
              else f' ({run}; the standard 256 needs ' f'{2 * standard})'
          )
      )
  elif dcfg.window > total:
    hint = (
        f'use --config.dynamics.window={max(needed, total // 2)} (allowed: {needed} .. '
        f'{total}) or 0 (auto)'
        if total >= needed
        else f'no window fits: the metrics need at least {needed} steps ({_scales_text(dcfg)})'
    )
    raise ValueError(
        f'dynamics.window={dcfg.window} but {run}: step-mode metrics would never be computed; '
        f'{hint}, or train longer.'
    )


def _fit_volatility(dcfg, computed, window, notes, warnings):
  """Resolves volatility_window_steps = auto, or checks an explicit one against the run."""
  standard = AUTO_DEFAULTS['volatility_window_steps']
  every = int(dcfg.every_steps)
  if dcfg.volatility_window_steps == AUTO:
    dcfg.volatility_window_steps = tracker_lib.auto_volatility_window(computed)
    if computed < 4:
      if computed:
        warnings.append(
            f'step-mode DSI volatility: only {computed} window(s) are computed (dynamics.window='
            f'{window}, every_steps={every}); the volatility needs 2 and the convergence signal '
            'more. Train longer or lower dynamics.window.'
        )
      return
    if dcfg.volatility_window_steps != standard:
      notes.append(
          f'dynamics.volatility_window_steps=auto -> {dcfg.volatility_window_steps} '
          f'(the run computes {computed} step windows; the standard {standard} needs '
          f'{2 * standard})'
      )
  elif computed and dcfg.volatility_window_steps > computed:
    raise ValueError(
        f'dynamics.volatility_window_steps={dcfg.volatility_window_steps} but the run computes '
        f'only {computed} step-mode DSI values (dynamics.window={window}, every_steps={every}): '
        f'the volatility would never be defined; allowed: 2 .. {computed}; use '
        f'--config.dynamics.volatility_window_steps={max(computed // 2, 2)} or 0 (auto).'
    )


def _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings):
  """Warnings for the probe (epoch-mode) history: one sample per epoch."""
  fix_short = f'train for at least {dfa_min} epochs (num_epochs)'
  if not _short_scales(dcfg):
    fix_short += (
        ', or use --config.dynamics.dfa_min_scale=3 --config.dynamics.dfa_max_divisor=2 '
        '(defined from 10 epochs on)'
    )
  if epochs < phase_min:
    warnings.append(
        f'epoch-mode synchrony and metastability need {phase_min} probe samples '
        f'(one per epoch; dynamics.phase_edge={dcfg.phase_edge}) but the run has '
        f'{epochs} epoch(s): they will not be computed.'
    )
  if dfa_min is not None and epochs < dfa_min:
    warnings.append(
        f'epoch-mode integration, DSI and convergence need {dfa_min} probe samples (one per '
        f'epoch; {_scales_text(dcfg)}) but the run has {epochs} epoch(s): they will not be '
        f'computed; {fix_short}.'
    )
    return
  if dfa_min is not None and dcfg.sliding_epochs < dfa_min:
    warnings.append(
        f'dynamics.sliding_epochs={dcfg.sliding_epochs} is shorter than the {dfa_min} samples '
        f'the DFA scales need ({_scales_text(dcfg)}): the sliding-window integration and DSI '
        f'will never be computed; use --config.dynamics.sliding_epochs={dfa_min} or more.'
    )
  with_dsi = epochs - (dfa_min or 1) + 1  # epochs at which the expanding DSI is defined
  vol = dcfg.volatility_window_epochs
  if with_dsi < vol:
    warnings.append(
        f'epoch-mode DSI volatility needs dynamics.volatility_window_epochs={vol} DSI values, '
        f'the run has {with_dsi} (DSI defined from epoch {dfa_min or 1} of {epochs}): '
        'volatility and convergence signal will not be computed; lower it or train longer.'
    )
  elif with_dsi - vol + 1 < dcfg.convergence_patience:
    warnings.append(
        f'epoch-mode convergence signal: {with_dsi - vol + 1} volatility value(s) but '
        f'dynamics.convergence_patience={dcfg.convergence_patience}; it cannot fire.'
    )
  if dcfg.convergence_warmup_epochs >= epochs:
    warnings.append(
        f'dynamics.convergence_warmup_epochs={dcfg.convergence_warmup_epochs} but the run has '
        f'{epochs} epoch(s): the epoch-mode convergence signal cannot fire.'
    )
