r"""Trains a vision network and measures its layer dynamics.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/default.py:dataset=cifar100 --workdir=runs/c100 \
      --config.dynamics.reduction=proj:8

All logic lives in training.loop.train_and_evaluate(config, workdir).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from training.loop import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  out = result['outputs']
  logging.info('Final test accuracy: %s', result['eval_accuracy'])
  print('\nResults:')
  print(f'  TensorBoard logs:    tensorboard --logdir {out["tensorboard"]}')
  print(f'  metrics (JSON lines): {out["metrics"]}')
  print(f'  checkpoints:          {out["checkpoints"]}')
  if 'dynamics' in out:
    print(f'  dynamics series:      {out["dynamics"]}')


if __name__ == '__main__':
  app.run(main)
