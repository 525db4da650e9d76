"""What a run's plan needs to know about its data (sizes, classes, image shape), from the
config alone where the config determines it, else from the loaded data."""

from typing import Any, NamedTuple, Optional, Tuple

CIFAR_SPLITS = {'cifar10': (50_000, 10_000, 10), 'cifar100': (50_000, 10_000, 100)}
CIFAR_SIDE = 32


class DataFacts(NamedTuple):
  """The data as the plan sees it (the arrays stay with the dataset)."""

  name: str
  train_size: int  # examples the run trains on (after data.train_subset)
  test_size: int  # examples it evaluates on (after data.test_subset)
  image_shape: Tuple[int, int, int]  # (H, W, 3) as stored, before config.image_size resizes
  num_classes: int
  class_names: Tuple[str, ...] = ()


def _subset(cfg, split: str, full: int) -> int:
  size = int(cfg[f'{split}_subset'])
  return size if size > 0 else full


def from_config(cfg: Any) -> Optional[DataFacts]:
  """The facts of `config.data` without loading anything; None where only the files tell them
  (an image folder, or a TFDS dataset other than CIFAR)."""
  source = cfg.source
  if source == 'synthetic':
    side, classes = int(cfg.image_size), int(cfg.num_classes)
    return DataFacts(
        'synthetic',
        _subset(cfg, 'train', int(cfg.train_size)),
        _subset(cfg, 'test', int(cfg.test_size)),
        (side, side, 3),
        classes,
        tuple(f'class_{i}' for i in range(classes)),
    )
  if source == 'tfds' and cfg.name in CIFAR_SPLITS:
    train, test, classes = CIFAR_SPLITS[cfg.name]
    return DataFacts(
        cfg.name,
        _subset(cfg, 'train', train),
        _subset(cfg, 'test', test),
        (CIFAR_SIDE, CIFAR_SIDE, 3),
        classes,
    )
  return None


def of(dataset) -> DataFacts:
  """The facts of a loaded dataset (data.Dataset or a streamed folder)."""
  return DataFacts(
      dataset.name,
      len(dataset.train_labels),
      len(dataset.test_labels),
      tuple(int(d) for d in dataset.train_images.shape[1:]),
      int(dataset.num_classes),
      tuple(dataset.class_names),
  )
