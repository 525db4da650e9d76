"""Streaming a TFDS dataset prepared as ArrayRecord (data/streaming.py, `data.source='tfds'`
with `data.streaming=True`): records read by index, each label read with its image. The
dataset is generated here (variable-size images in 10 classes; no network, no real data)."""

import glob
import math
import os
import shutil

import numpy as np
import pytest

import data
from configs import imagenet as imagenet_config
from data import streaming

tfds = pytest.importorskip('tensorflow_datasets')

NUM_CLASSES = 10
NAME = 'generated_variable_images'


class GeneratedVariableImages(tfds.core.GeneratorBasedBuilder):
  """4 train and 2 test images per class, each of its own size (20 to 60 pixels a side)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3)),
                'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }
        ),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(4, 0), 'test': self._generate_examples(2, 1)}

  def _generate_examples(self, per_class, seed):
    rng = np.random.default_rng(seed)
    for k in range(NUM_CLASSES):
      for i in range(per_class):
        h, w = rng.integers(20, 61, size=2)
        colour = np.array([25 * k, 255 - 25 * k, 100 + 10 * i])
        pixels = np.clip(colour + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        yield f'{k}_{i}', {'image': pixels, 'label': k}


def _prepare(data_dir, file_format):
  builder = GeneratedVariableImages(data_dir=str(data_dir), file_format=file_format)
  builder.download_and_prepare()
  return str(data_dir)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp('tfds'), 'array_record')


def stream_config(data_dir, size=32):
  cfg = data.default_config()
  cfg.source = 'tfds'
  cfg.name = NAME
  cfg.tfds_data_dir = data_dir
  cfg.streaming = True
  cfg.image_size = size
  return cfg


def test_records_stream_with_their_labels(data_dir):
  ds = data.load(stream_config(data_dir))
  assert isinstance(ds, streaming.StreamingDataset) and ds.num_classes == NUM_CLASSES
  assert ds.train_images.shape == (40, 32, 32, 3) and ds.test_images.shape == (20, 32, 32, 3)
  records = ds.train_images.records
  labels = [records.read(i)[1] for i in range(40)]  # TFDS stores the records shuffled
  assert np.array_equal(np.bincount(labels), [4] * NUM_CLASSES)
  pixels, label = records.read(5)
  assert pixels.dtype == np.uint8 and pixels.shape[-1] == 3
  assert len({records.read(i)[0].shape for i in range(8)}) > 1  # sizes vary
  np.testing.assert_array_equal(ds.train_images[5], streaming.preprocess(pixels, 32))
  assert ds.train_labels[5] == label and len(ds.train_labels) == 40
  assert np.array_equal(ds.train_labels[[5, 0]], [label, labels[0]])
  with pytest.raises(TypeError, match='in memory'):
    np.asarray(ds.train_labels)
  # Evaluation: every test record once, in order, each label read with its image.
  x, y, mask = (np.concatenate(parts) for parts in zip(*ds.eval_batches(8)))
  valid = mask == 1
  test_labels = [ds.test_images.records.read(i)[1] for i in range(20)]
  assert valid.sum() == 20 and np.array_equal(y[valid], test_labels)
  assert np.array_equal(np.bincount(y[valid]), [2] * NUM_CLASSES)
  np.testing.assert_array_equal(x[valid][7], ds.test_images[7])
  halves = [list(ds.eval_batches(8, p, 2)) for p in (0, 1)]
  assert np.array_equal(np.concatenate([np.concatenate([a[1], b[1]]) for a, b in zip(*halves)]), y)


def test_processes_read_disjoint_shards_of_the_same_global_batch(data_dir):
  ds = data.load(stream_config(data_dir))
  labels = np.asarray([ds.train_images.records.read(i)[1] for i in range(40)])
  whole = ds.train_batches(seed=2, global_batch=8)
  halves = [ds.train_batches(2, 8, process_index=p, process_count=2) for p in (0, 1)]
  for step in (0, 3, 6):
    idx = [h.indices(step) for h in halves]
    assert not set(idx[0]) & set(idx[1])
    parts = [h.batch(step) for h in halves]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole.batch(step)[0])
    # The labels come from the records the batch decoded.
    assert np.array_equal(np.concatenate([p[1] for p in parts]), labels[whole.indices(step)])
    assert np.array_equal(whole.batch(step)[1], labels[whole.indices(step)])


def test_unprepared_or_tfrecord_datasets_fail_with_what_to_do(data_dir, tmp_path):
  cfg = stream_config(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='not prepared'):
    data.load(cfg)
  with pytest.raises(ValueError, match='array_record'):
    data.load(stream_config(_prepare(tmp_path / 'tfrecord', 'tfrecord')))
  cfg = stream_config(data_dir)
  cfg.test_subset = 4
  with pytest.raises(ValueError, match='test_subset'):
    data.load(cfg)
  cfg = data.default_config()
  cfg.streaming = True
  with pytest.raises(ValueError, match='synthetic'):
    data.load(cfg)
  with pytest.raises(ValueError, match='not a TFDS dataset name'):
    data.load(_named('x y'))


def _named(name):
  cfg = stream_config('')
  cfg.name = name
  return cfg


def test_a_torn_record_file_fails_naming_the_record(data_dir, tmp_path):
  torn = tmp_path / 'torn'
  shutil.copytree(data_dir, torn)
  (path,) = glob.glob(str(torn / NAME / '*' / '*train.array_record*'))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  ds = data.load(stream_config(str(torn)))
  with pytest.raises(ValueError, match='record .* cannot be read.*prepare the dataset again'):
    for i in range(len(ds.train_images)):
      ds.train_images.records.read(i)


def test_imagenet_config_trains_on_streamed_tfds_records(data_dir, tmp_path):
  """configs/imagenet.py with the TFDS source in place of the folder: 2 steps and an
  evaluation, every label read from its record."""
  from training import loop  # pylint: disable=import-outside-toplevel

  config = imagenet_config.get_config('model=resnet18,batch=8,size=64,every=1')
  config.model_args.width = 8
  config.data.source = 'tfds'
  config.data.name = NAME
  config.data.tfds_data_dir = data_dir
  config.num_train_steps = 2
  config.dynamics.probe_size = 8
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['final_step'] == 2 and summary['finished']
  assert 0 <= summary['eval_accuracy'] <= 100 and math.isfinite(summary['eval_loss'])
