r"""CIFAR ResNet-18 with the standard recipe (SGD 0.9, lr 0.1, cosine, wd 5e-4, batch 128).

  python train.py --config=configs/default.py --workdir=runs/cifar10_resnet18
  python train.py --config=configs/default.py:dataset=cifar100 --workdir=runs/cifar100_resnet18

Offline, point the data at a local image folder or archive:

  python train.py --config=configs/default.py --workdir=runs/c10 \
      --config.data.source=image_folder --config.data.path=../shared/data/cifar10.tar.gz

Expected: about 95% test accuracy on CIFAR-10 after the default 30 epochs... (full runs
belong on an accelerator; a CPU does several seconds per step).
"""

from configs import common


def get_config(arg=''):
  args = common.parse_arg(arg, dataset='cifar10', model='resnet18')
  config = common.base_config()
  config.model = args.model
  config.data.name = args.dataset
  return config
