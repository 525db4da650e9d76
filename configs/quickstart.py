r"""The quick start: a slim ResNet-18 on the embedded synthetic dataset, a few CPU minutes.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart

(`make demo` runs exactly this.) The dynamics tracker runs in both modes: every training step
over a sliding window, and on a fixed probe batch at the end of every epoch.
"""

from configs import common


def get_config(arg=''):
  del arg
  config = common.base_config()
  config.model = 'resnet18'
  config.model_args.width = 8
  config.data.source = 'synthetic'
  config.data.num_classes = 10
  config.data.train_size = 2048
  config.data.test_size = 512
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_epochs = 16
  config.learning_rate = 0.05
  config.warmup_epochs = 1.0
  config.log_every_steps = 32
  config.checkpoint_every_steps = 128
  config.dynamics.window = 128
  config.dynamics.volatility_window_steps = 25
  config.dynamics.probe_size = 128
  # Shorter DFA scales than the default (4 .. N//4) so that the epoch-mode history reaches
  # three scales after 12 epochs instead of 24; the step window uses scales 3 .. 64.
  config.dynamics.dfa_min_scale = 3
  config.dynamics.dfa_max_divisor = 2
  config.dynamics.sliding_epochs = 12
  config.dynamics.volatility_window_epochs = 3
  config.dynamics.convergence_warmup_epochs = 2
  return config
