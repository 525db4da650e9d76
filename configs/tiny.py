r"""A seconds-long run for tests: tiny ResNet, small synthetic dataset.

python train.py --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import common


def get_config(arg=''):
  del arg
  config = common.base_config()
  config.model = 'resnet18_tiny'
  config.data.source = 'synthetic'
  config.data.num_classes = 4
  config.data.train_size = 256
  config.data.test_size = 96
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.learning_rate = 0.05
  config.warmup_epochs = 0.0
  config.log_every_steps = 4
  config.checkpoint_every_steps = 8
  # dynamics.window and volatility_window_steps stay auto: sized to however many steps a test
  # runs (16 steps: a 10-step window, volatility over 3).
  config.dynamics.dfa_min_scale = 3
  config.dynamics.dfa_max_divisor = 2
  config.dynamics.probe_size = 32
  return config
