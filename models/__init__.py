"""Model registry: ``models.get(name, num_classes, **variant)``.

Each family lives in its own file and exports ``VARIANTS`` (name -> constructor); adding a
family is that file plus one line below. Every model maps ``x: f[B, H, W, 3]`` (normalised)
and ``train: bool`` to ``logits f[B, num_classes]`` and sows its taps into 'intermediates';
``apply_with_taps(model, variables, x, ...)`` returns ``(logits, taps)``; see models/taps.py.
"""

from models import densenet, mobilenetv2, resnet, vgg, vit, vit_checkpoint
from models.taps import apply_with_taps  # noqa: F401  (models.apply_with_taps)

_REGISTRY = {
    **resnet.VARIANTS,
    **vgg.VARIANTS,
    **densenet.VARIANTS,
    **mobilenetv2.VARIANTS,
    **vit.VARIANTS,
}


# Families with a pretrained-weights loader: name prefix -> load(params, path) -> params.
_PRETRAINED_LOADERS = {
    'vit': vit_checkpoint.load_pretrained,
}


def names():
  return sorted(_REGISTRY)


def get(name: str, num_classes: int, **variant):
  """Builds the named model; ``variant`` overrides module fields (e.g. ``width=32``)."""
  if name not in _REGISTRY:
    raise ValueError(
        f'Unknown model {name!r} (config field `model`); ' f'available: {", ".join(names())}.'
    )
  constructor = _REGISTRY[name]
  fields = set(getattr(constructor, 'func', constructor).__dataclass_fields__)
  unknown = sorted(set(variant) - fields)
  if unknown:
    known = ', '.join(sorted(fields - {'parent', 'name'}))
    raise ValueError(
        f'Model {name!r} has no field(s) {", ".join(unknown)} (config field '
        f'`model_args`); its fields: {known}.'
    )
  return constructor(num_classes=num_classes, **variant)


def pretrained_families():
  """Name prefixes of the models that `load_pretrained` can fill (config init_checkpoint)."""
  return tuple(_PRETRAINED_LOADERS)


def load_pretrained(name: str, params, path: str):
  """Loads `path` into `params` (freshly initialised) for model `name` (config init_checkpoint)."""
  for prefix, loader in _PRETRAINED_LOADERS.items():
    if name.startswith(prefix):
      return loader(params, path)
  raise ValueError(
      f'init_checkpoint is set but model {name!r} has no pretrained loader; '
      f'models with one: {", ".join(p + "*" for p in _PRETRAINED_LOADERS)}.'
  )
