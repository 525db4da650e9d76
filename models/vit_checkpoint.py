"""Pretrained ViT weights in the `.npz` layout of google-research/vision_transformer.

A checkpoint is a flat ``.npz`` whose keys are '/'-joined parameter paths
('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel', 'head/kernel', ...),
exactly the paths of models/vit.py's ``params`` collection. Fine-tuning flow:

    variables = model.init(key, x, train=False)      # x at the fine-tuning resolution
    params = load_pretrained(variables['params'], 'ViT-B_16.npz')

The head is taken from the checkpoint only when its class count matches; otherwise the given
(freshly initialised) head is kept. Position embeddings are resampled to the model's token grid
as the original code does (scipy.ndimage.zoom, order 1, class token kept as is). Extra
checkpoint entries (e.g. the ImageNet-21k 'pre_logits' layer) are ignored and logged.
"""

import logging
from typing import Any, Dict

import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from flax import traverse_util

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
HEAD_KEYS = ('head/kernel', 'head/bias')

logger = logging.getLogger(__name__)


def flatten_params(params) -> Dict[str, Any]:
  """Nested params -> {'a/b/c': leaf}, the checkpoint's key layout."""
  return traverse_util.flatten_dict(params, sep='/')


def save_npz(params, path: str) -> None:
  """Writes ``params`` (a ViT ``params`` collection) to ``path`` in the flat '/' key layout."""
  np.savez(path, **{k: np.asarray(v) for k, v in flatten_params(params).items()})


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """Resamples position embeddings f[1, 1 + g*g, C] to f[1, num_tokens, C].

  The class-token embedding (index 0) is kept; the square g x g grid of the rest is zoomed
  bilinearly (scipy.ndimage.zoom, order 1, as the original release) to the new square grid.
  Identity when the token counts already match.
  """
  posemb = np.asarray(posemb)
  if posemb.shape[1] == num_tokens:
    return posemb
  tok, grid = posemb[:, :1], posemb[0, 1:]
  gs_old, gs_new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - 1)))
  if gs_old * gs_old != len(grid) or gs_new * gs_new != num_tokens - 1:
    raise ValueError(
        f'{POSEMB_KEY}: can only resample square token grids, got '
        f'{len(grid)} -> {num_tokens - 1} patch tokens.'
    )
  zoom = (gs_new / gs_old, gs_new / gs_old, 1)
  grid = scipy.ndimage.zoom(grid.reshape(gs_old, gs_old, -1), zoom, order=1)
  return np.concatenate([tok, grid.reshape(1, gs_new * gs_new, -1)], axis=1)


def load_pretrained(params, npz_path: str):
  """Returns ``params`` (freshly initialised ViT params) overwritten by the checkpoint's values.

  Raises ValueError naming every missing key and every shape that cannot be adapted; the head
  is kept from ``params`` when the class count differs, and the position embeddings are
  resampled when the input size differs (both logged).
  """
  expected = flatten_params(params)
  with np.load(npz_path) as npz:
    restored = {k: npz[k] for k in npz.files}

  missing = sorted(set(expected) - set(restored))
  if missing:
    raise ValueError(
        f'{npz_path}: checkpoint lacks {len(missing)} parameter(s) of the model: '
        f'{", ".join(missing)}.'
    )
  extra = sorted(set(restored) - set(expected))
  if extra:
    logger.info(
        'load_pretrained: ignoring %d checkpoint entries not in the model: %s',
        len(extra),
        ', '.join(extra),
    )

  out = {}
  if any(restored[k].shape != expected[k].shape for k in HEAD_KEYS):
    logger.info(
        'load_pretrained: keeping the initialised head %s (checkpoint head %s).',
        expected['head/kernel'].shape,
        restored['head/kernel'].shape,
    )
    out.update({k: expected[k] for k in HEAD_KEYS})
  posemb_shape = expected[POSEMB_KEY].shape
  if restored[POSEMB_KEY].shape != posemb_shape:
    if restored[POSEMB_KEY].shape[2] != posemb_shape[2]:
      raise ValueError(
          f'{npz_path}: {POSEMB_KEY} has width {restored[POSEMB_KEY].shape[2]}, '
          f'the model {posemb_shape[2]}.'
      )
    logger.info(
        'load_pretrained: resampling %s from %s to %s.',
        POSEMB_KEY,
        restored[POSEMB_KEY].shape,
        posemb_shape,
    )
    restored[POSEMB_KEY] = resample_posemb(restored[POSEMB_KEY], posemb_shape[1])

  mismatched = [
      f'{k}: checkpoint {restored[k].shape}, model {v.shape}'
      for k, v in expected.items()
      if k not in out and restored[k].shape != v.shape
  ]
  if mismatched:
    raise ValueError(
        f'{npz_path}: shape mismatch for {len(mismatched)} parameter(s): ' + '; '.join(mismatched)
    )
  for k, v in expected.items():
    if k not in out:
      out[k] = jnp.asarray(restored[k], dtype=v.dtype)
  return traverse_util.unflatten_dict(out, sep='/')
