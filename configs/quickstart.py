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
  # 16 epochs: DFA scales 3 .. N//2 so that the epoch history has integration from epoch 10
  # on (the step window then uses scales 3 .. 64).
  return common.use_short_history_dynamics(config)
