"""Reliability, third pass (issue 26, the items its second pass left open): a decoded-data cache
file whose labels are out of range is named in the error, with the bad value, the range and the
fix.

Synthetic tiny image folders in tmp_path only; no network, no real data.
"""

import os

import numpy as np
import pytest
from PIL import Image

import data
from data import image_folder


def _folder(root, classes=('a', 'b', 'c'), per_class=2, size=8):
  """root/<split>/<class>/<i>.png: 3 classes x 2 images per split."""
  for split in ('train', 'test'):
    for cls in classes:
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(per_class):
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(
            os.path.join(root, split, cls, f'{i}.png')
        )
  return root


def _config(path, cache_dir, **changes):
  cfg = data.default_config()
  cfg.update(dict(source='image_folder', path=path, cache_dir=cache_dir, **changes))
  return cfg


def _rewrite_cache(cache_file, split, index, value):
  """The cache file with one label replaced, its digest (the cache key) kept: the file is
  still taken as the cache of that folder."""
  with np.load(cache_file, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  labels = arrays[f'{split}_labels'].copy()
  labels[index] = value
  arrays[f'{split}_labels'] = labels
  with open(cache_file, 'wb') as f:
    np.savez(f, **arrays)


@pytest.mark.parametrize(
    'split, value, changes',
    [
        ('train', 200, {}),
        ('test', -1, {}),
        ('train', 3, {}),  # one past the last class
        ('train', 200, {'train_subset': 3}),  # the subset is drawn from the labels first
    ],
)
def test_cache_file_with_an_out_of_range_label_is_named(tmp_path, split, value, changes):
  root = _folder(str(tmp_path / 'images'))
  cache = str(tmp_path / 'cache')
  cfg = _config(root, cache, **changes)
  first = data.load(cfg)  # decodes and writes the cache
  assert first.num_classes == 3
  (cache_file,) = [os.path.join(cache, n) for n in os.listdir(cache) if n.endswith('.npz')]
  _rewrite_cache(cache_file, split, 1, value)

  with pytest.raises(ValueError) as info:
    data.load(cfg)
  message = str(info.value)
  assert cache_file in message
  assert f'{split}_labels' in message
  assert str(value) in message
  assert '[0, 2]' in message  # the expected range, 3 classes
  assert 'delete' in message.lower() and 'decoded again' in message

  # The fix the message gives works: the file is decoded again, with the right labels.
  os.remove(cache_file)
  again = data.load(cfg)
  np.testing.assert_array_equal(again.train_labels, first.train_labels)
  np.testing.assert_array_equal(again.test_labels, first.test_labels)


def test_load_image_folder_checks_the_cache_it_returns(tmp_path):
  """The check is in the loader itself, so every caller of load_image_folder gets it."""
  root = _folder(str(tmp_path / 'images'))
  cache = str(tmp_path / 'cache')
  image_folder.load_image_folder(root, cache_dir=cache)
  (name,) = os.listdir(cache)
  _rewrite_cache(os.path.join(cache, name), 'train', 0, 200)
  with pytest.raises(ValueError, match=rf'{name}.*train_labels.*200.*\[0, 2\]'):
    image_folder.load_image_folder(root, cache_dir=cache)
