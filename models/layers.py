"""Layer factories shared by the convolutional families."""

import functools
from typing import Any, Callable, Tuple

import flax.linen as nn


def conv_and_norm(dtype: Any, train: bool) -> Tuple[Callable, Callable]:
  """Bias-free 'SAME' convolutions (BatchNorm follows each) and BatchNorm with the usual
  CIFAR settings (momentum 0.9, eps 1e-5; batch statistics while training)."""
  conv = functools.partial(nn.Conv, use_bias=False, padding='SAME', dtype=dtype)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype)
  return conv, norm
