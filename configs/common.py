"""Pieces shared by every experiment config: the full field list and the `arg` parser."""

import ml_collections

from data import default_config as data_default_config
from dynamics.config import default_config as dynamics_default_config
from training.early_stop import default_config as early_stop_default_config


def parse_arg(arg, **defaults):
  """'model=resnet34,dataset=cifar100' -> ConfigDict(defaults updated), typed like defaults."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(
          f'Unknown config argument {key!r} in {arg!r}; ' f'allowed: {", ".join(sorted(defaults))}.'
      )
    kind = type(defaults[key])
    parsed[key] = value.lower() in ('1', 'true', 'yes') if kind is bool else kind(value)
  return parsed


def base_config():
  """Every field a run reads, with the defaults of a CIFAR-10 ResNet-18 run."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Seeds trained together in one compiled program: replica k is the run with seed + k
  # (training/replicas.py). 1 is an ordinary run.
  config.replicas = 1
  # Devices the replicas are spread over (a ('replica', 'data') mesh; each replica is then
  # data-parallel over device_count / replica_devices devices). 0: gcd(replicas, devices).
  config.replica_devices = 0
  # How the step runs the replicas: 'vmap' (batched ops), 'unroll' (the single-seed step
  # written out once per replica in the program), 'map' (lax.map: a loop over the replicas,
  # slow on CPU) or 'auto' (the measured default per backend, training/replicas.py).
  config.replica_impl = 'auto'

  config.model = 'resnet18'
  # Size knobs overriding the registry defaults; 0 keeps the model's own value. `width`:
  # ResNet/VGG base channels (64); `width_mult`: MobileNetV2 (1.0); `growth`: DenseNet (32).
  # `stem`: 'cifar' | 'imagenet' stem and head for the convolutional families; '' (auto) picks
  # ImageNet for inputs of 128 pixels or more (models/layers.py), the CIFAR network below.
  config.model_args = ml_collections.ConfigDict(dict(width=0, width_mult=0.0, growth=0, stem=''))
  # 'float32', or 'bfloat16' for mixed precision (bf16 compute, f32 params/optimiser).
  config.dtype = 'float32'
  # Pretrained weights (.npz in the original ViT release layout); '' trains from scratch.
  config.init_checkpoint = ''

  config.data = data_default_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  # 0 keeps the dataset's image size; ViT resizes to 224 inside the jitted step.
  config.image_size = 0
  config.crop_padding = 4
  config.flip = True

  config.batch_size = 128  # global, across all devices and hosts
  config.eval_batch_size = 500
  config.num_epochs = 30
  config.num_train_steps = -1  # > 0 overrides num_epochs (tests, smoke runs)

  config.optimizer = 'sgd'  # sgd | adam | adamw
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4  # L2 added to the gradient (sgd, adam) or decoupled (adamw)
  config.schedule = 'cosine'  # cosine | constant
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.0
  config.grad_clip_norm = 0.0  # 0 disables

  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3

  config.dynamics = dynamics_default_config()
  # Stop (or decay the learning rate) when the convergence signal fires: training/early_stop.py.
  config.early_stop = early_stop_default_config()
  return config


def use_short_history_dynamics(config):
  """Dynamics settings for runs of only 12 to 20 epochs (quick start, CPU-scale study).

  DFA scales from 3 to N//2 instead of 4 to N//4, so that the epoch-mode history reaches three
  scales after 10 to 12 epochs instead of 24, with a sliding history and volatility window to
  match. Defined once so both configs ablate the same thing.
  """
  config.dynamics.dfa_min_scale = 3
  config.dynamics.dfa_max_divisor = 2
  config.dynamics.sliding_epochs = 12
  config.dynamics.volatility_window_epochs = 3
  config.dynamics.convergence_warmup_epochs = 2
  return config


def flatten(tree, prefix: str = ''):
  """{'a': {'b': 1}} -> {'a.b': 1}: config fields by their dotted names."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(saved, new):
  """'field: saved -> new' for every dotted field that differs between two config dicts.

  A field the saved config lacks (it was added to the project after that run was written)
  counts as its default value, so a run written before a field existed still resumes when the
  new config keeps that field's default.
  """
  a, b = flatten(saved), flatten(new)
  defaults = flatten(base_config().to_dict())
  missing = '<absent>'
  for k in set(b) - set(a):
    if k in defaults and defaults[k] == b[k]:
      a[k] = b[k]
  return [
      f'{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}'
      for k in sorted(set(a) | set(b))
      if a.get(k, missing) != b.get(k, missing)
  ]
