"""PyTorch twins of the CIFAR models, for the throughput comparison in bench_train.py only.

The project never imports this file; it needs the optional `torch` package (CPU build). Each
network is layer for layer the Flax model of the same name in models/ (same widths, bias-free
convs followed by BatchNorm with momentum 0.1 = Flax 0.9 and eps 1e-5, the same heads), so
the two do the same arithmetic; tests/test_torch_models.py checks that their parameter counts
match exactly. The only difference is padding of stride-2 3x3 convs (PyTorch pads 1 on each
side, Flax 'SAME' pads 0/1), which changes no FLOP count.

Like the Flax models, ``forward(x)`` takes NCHW float images and returns logits; the taps
are not returned (PyTorch has no dynamics tracker to feed).
"""

import math

import torch
from torch import nn


def conv_bn(cin, cout, kernel=3, stride=1, groups=1):
  return [
      nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
      nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1),
  ]


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, filters, stride):
    super().__init__()
    self.body = nn.Sequential(
        *conv_bn(cin, filters, 3, stride), nn.ReLU(inplace=True), *conv_bn(filters, filters, 3)
    )
    self.shortcut = (
        nn.Sequential(*conv_bn(cin, filters, 1, stride))
        if stride != 1 or cin != filters
        else nn.Identity()
    )

  def forward(self, x):
    return torch.relu(self.shortcut(x) + self.body(x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, filters, stride):
    super().__init__()
    out = filters * 4
    self.body = nn.Sequential(
        *conv_bn(cin, filters, 1),
        nn.ReLU(inplace=True),
        *conv_bn(filters, filters, 3, stride),
        nn.ReLU(inplace=True),
        *conv_bn(filters, out, 1),
    )
    self.shortcut = (
        nn.Sequential(*conv_bn(cin, out, 1, stride)) if stride != 1 or cin != out else nn.Identity()
    )

  def forward(self, x):
    return torch.relu(self.shortcut(x) + self.body(x))


class ResNet(nn.Module):

  def __init__(self, stage_sizes, block, num_classes, width=64):
    super().__init__()
    layers = [*conv_bn(3, width), nn.ReLU(inplace=True)]
    cin = width
    for stage, blocks in enumerate(stage_sizes):
      for b in range(blocks):
        filters = width * 2**stage
        layers.append(block(cin, filters, 2 if stage > 0 and b == 0 else 1))
        cin = filters * block.expansion
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean((2, 3)))


VGG16_LAYOUT = (1, 1, 'M', 2, 2, 'M', 4, 4, 4, 'M', 8, 8, 8, 'M', 8, 8, 8, 'M')


class VGG(nn.Module):

  def __init__(self, num_classes, width=64, layout=VGG16_LAYOUT):
    super().__init__()
    layers, cin = [], 3
    for item in layout:
      if item == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [*conv_bn(cin, width * item), nn.ReLU(inplace=True)]
        cin = width * item
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean((2, 3)))


class DenseLayer(nn.Module):

  def __init__(self, cin, growth, bottleneck=4):
    super().__init__()
    self.body = nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, bottleneck * growth, 1, bias=False),
        nn.BatchNorm2d(bottleneck * growth),
        nn.ReLU(inplace=True),
        nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False),
    )

  def forward(self, x):
    return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):

  def __init__(self, num_classes, block_sizes=(6, 12, 24, 16), growth=32, compression=0.5):
    super().__init__()
    cin = 2 * growth
    layers = [*conv_bn(3, cin), nn.ReLU(inplace=True)]
    for i, n in enumerate(block_sizes):
      for _ in range(n):
        layers.append(DenseLayer(cin, growth))
        cin += growth
      if i + 1 < len(block_sizes):
        out = int(cin * compression)
        layers += [
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, out, 1, bias=False),
            nn.AvgPool2d(2, 2),
        ]
        cin = out
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean((2, 3)))


CIFAR_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value, divisor=8):
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):

  def __init__(self, cin, cout, stride, expansion):
    super().__init__()
    hidden = cin * expansion
    layers = [] if expansion == 1 else [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
    layers += [
        *conv_bn(hidden, hidden, 3, stride, groups=hidden),
        nn.ReLU6(inplace=True),
        *conv_bn(hidden, cout, 1),
    ]
    self.body = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):

  def __init__(self, num_classes, width_mult=1.0, stages=CIFAR_STAGES, last=1280, dropout=0.2):
    super().__init__()
    cin = make_divisible(32 * width_mult)
    layers = [*conv_bn(3, cin), nn.ReLU6(inplace=True)]
    for expansion, channels, repeats, stride in stages:
      cout = make_divisible(channels * width_mult)
      for b in range(repeats):
        layers.append(InvertedResidual(cin, cout, stride if b == 0 else 1, expansion))
        cin = cout
    last = make_divisible(last * max(1.0, width_mult))
    layers += [*conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
    self.features = nn.Sequential(*layers)
    self.dropout = nn.Dropout(dropout)
    self.head = nn.Linear(last, num_classes)

  def forward(self, x):
    return self.head(self.dropout(self.features(x).mean((2, 3))))


MODELS = {
    'resnet18': lambda c, **kw: ResNet((2, 2, 2, 2), BasicBlock, c, **kw),
    'resnet34': lambda c, **kw: ResNet((3, 4, 6, 3), BasicBlock, c, **kw),
    'resnet50': lambda c, **kw: ResNet((3, 4, 6, 3), Bottleneck, c, **kw),
    'vgg16': lambda c, **kw: VGG(c, **kw),
    'densenet121': lambda c, **kw: DenseNet(c, **kw),
    'mobilenetv2': lambda c, **kw: MobileNetV2(c, **kw),
}


def get(name: str, num_classes: int, **variant) -> nn.Module:
  """The PyTorch twin of models.get(name, num_classes, **variant) for the CIFAR families."""
  if name not in MODELS:
    raise ValueError(f'No PyTorch twin for {name!r}; available: {", ".join(MODELS)}.')
  return MODELS[name](num_classes, **variant)


def num_params(model: nn.Module) -> int:
  return sum(math.prod(p.shape) for p in model.parameters())
