"""Config checks that run before anything expensive, each naming the field and what is allowed."""

import models
from dynamics import nulls, signals, tracker as tracker_lib
from training import optim

DATA_SOURCES = ('synthetic', 'tfds', 'image_folder')
TFDS_NAMES = ('cifar10', 'cifar100')
DTYPES = ('float32', 'bfloat16')


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def validate_config(config, num_devices: int, num_processes: int = 1):
  """Raises ValueError with the offending field for any config this run cannot honour."""
  _require(config.model in models.names(),
           f'Unknown model {config.model!r} (config field `model`); available: '
           f'{", ".join(models.names())}.')
  _require(config.data.source in DATA_SOURCES,
           f'Unknown data source {config.data.source!r} (config field `data.source`); '
           f'allowed: {", ".join(DATA_SOURCES)}.')
  if config.data.source == 'tfds':
    _require(config.data.name in TFDS_NAMES,
             f'Unknown dataset {config.data.name!r} (config field `data.name`); allowed: '
             f'{", ".join(TFDS_NAMES)}.')
  _require(config.dtype in DTYPES, f'dtype={config.dtype!r}; allowed: {", ".join(DTYPES)}.')
  _require(config.optimizer in optim.OPTIMIZERS,
           f'Unknown optimizer {config.optimizer!r} (config field `optimizer`); allowed: '
           f'{", ".join(optim.OPTIMIZERS)}.')
  _require(config.schedule in optim.SCHEDULES,
           f'Unknown schedule {config.schedule!r} (config field `schedule`); allowed: '
           f'{", ".join(optim.SCHEDULES)}.')
  _require(config.learning_rate > 0,
           f'learning_rate={config.learning_rate} must be positive.')
  _require(config.weight_decay >= 0, f'weight_decay={config.weight_decay} must be >= 0.')
  _require(config.num_epochs > 0 or config.num_train_steps > 0,
           'Set num_epochs > 0 (or num_train_steps > 0).')
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    _require(value > 0 and value % num_devices == 0,
             f'{field}={value} must be a positive multiple of the device count '
             f'({num_devices}); the global batch is split evenly across devices.')
    _require(value % num_processes == 0,
             f'{field}={value} must be divisible by the process count ({num_processes}).')
  _require(config.log_every_steps > 0, 'log_every_steps must be positive.')
  _require(config.checkpoint_every_steps > 0, 'checkpoint_every_steps must be positive.')
  _require(config.keep_checkpoints > 0, 'keep_checkpoints must be positive.')
  if config.dynamics.enabled:
    validate_dynamics(config.dynamics, num_devices)


def validate_dynamics(dcfg, num_devices: int):
  signals.parse_reduction(dcfg.reduction)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  _require(spec.integration_method in ('per_layer_mean', 'mean_field'),
           f'dynamics.integration_method={spec.integration_method!r}; allowed: '
           'per_layer_mean, mean_field.')
  _require(spec.phase_preprocess in ('detrend', 'demean', 'diff'),
           f'dynamics.phase_preprocess={spec.phase_preprocess!r}; allowed: detrend, demean, '
           'diff.')
  _require(spec.dsi_form in ('product', 'linear'),
           f'dynamics.dsi_form={spec.dsi_form!r}; allowed: product, linear.')
  _require(dcfg.dfa_order >= 1, f'dynamics.dfa_order={dcfg.dfa_order} must be >= 1.')
  _require(isinstance(dcfg.surrogates, int) and dcfg.surrogates >= 0,
           f'dynamics.surrogates={dcfg.surrogates!r} must be an integer >= 0 (surrogates per '
           'metric evaluation; 0 = no null models).')
  nulls.parse_methods(dcfg.surrogate_methods)
  smallest = (min(tracker_lib.resolve_scales(dcfg, 2**31, strict=True)) if dcfg.dfa_scales
              else dcfg.dfa_min_scale)
  _require(smallest >= dcfg.dfa_order + 2,
           f'dynamics.dfa_order={dcfg.dfa_order} needs DFA scales >= {dcfg.dfa_order + 2} (more '
           f'points per window than polynomial coefficients); the smallest is {smallest} '
           '(dynamics.dfa_scales / dfa_min_scale).')
  _require(dcfg.phase_edge >= 0, f'dynamics.phase_edge={dcfg.phase_edge} must be >= 0.')
  _require(dcfg.volatility_window_steps >= 2 and dcfg.volatility_window_epochs >= 2,
           'dynamics.volatility_window_steps and volatility_window_epochs must be >= 2.')
  _require(0 < dcfg.convergence_rho < 1,
           f'dynamics.convergence_rho={dcfg.convergence_rho} must be in (0, 1).')
  _require(dcfg.convergence_patience >= 1, 'dynamics.convergence_patience must be >= 1.')
  if dcfg.step_mode:
    _require(dcfg.every_steps >= 1, f'dynamics.every_steps={dcfg.every_steps} must be >= 1.')
    _require(dcfg.window >= tracker_lib.min_phase_samples(spec),
             f'dynamics.window={dcfg.window} is too short for the phase metrics.')
    try:
      tracker_lib.resolve_scales(dcfg, dcfg.window, strict=True)
    except ValueError as e:
      raise ValueError(f'dynamics.window={dcfg.window} does not fit the DFA scales: {e}') from e
  if dcfg.probe_mode:
    _require(dcfg.probe_split in ('train', 'test'),
             f'dynamics.probe_split={dcfg.probe_split!r}; allowed: train, test.')
    _require(dcfg.probe_size > 0 and dcfg.probe_size % num_devices == 0,
             f'dynamics.probe_size={dcfg.probe_size} must be a positive multiple of the '
             f'device count ({num_devices}).')
    _require(dcfg.sliding_epochs >= 3, 'dynamics.sliding_epochs must be >= 3.')
