"""The PyTorch twins used by benchmarks/bench_train.py do the same arithmetic as the models.

They are only compared when PyTorch is installed (an optional benchmark dependency,
requirements-bench.txt); the counts they must reach are the ones tests/test_models.py checks.
"""

import os
import sys

import pytest

from tests.test_models import FULL

torch = pytest.importorskip('torch')
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')
)
import torch_models  # noqa: E402


@pytest.mark.parametrize('name', sorted(torch_models.MODELS))
def test_twin_parameter_counts_match(name):
  for num_classes in (10, 100):
    want = FULL[name][0 if num_classes == 10 else 1]
    assert torch_models.num_params(torch_models.get(name, num_classes)) == want, num_classes


def test_twin_forward_shapes():
  x = torch.zeros(2, 3, 32, 32)
  for name in torch_models.MODELS:
    assert torch_models.get(name, 10).eval()(x).shape == (2, 10), name
