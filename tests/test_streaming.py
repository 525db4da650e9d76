"""The streaming image-folder path (data/streaming.py) and configs/imagenet.py, on a generated
folder of variable-size JPEGs and PNGs in 10 classes (no network, no real data)."""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data
from configs import imagenet as imagenet_config
from data import streaming

NUM_CLASSES = 10


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """<root>/{train,test}/class_k/*.{jpg,png}: 4 train and 2 test images per class, each of
  its own size (20 to 90 pixels a side), class-dependent colour plus noise."""
  root = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  for split, per_class in (('train', 4), ('test', 2)):
    for k in range(NUM_CLASSES):
      os.makedirs(root / split / f'class_{k}')
      for i in range(per_class):
        h, w = rng.integers(20, 91, size=2)
        colour = np.array([25 * k, 255 - 25 * k, 100 + 10 * i])
        pixels = np.clip(colour + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        ext = 'jpg' if i % 2 == 0 else 'png'
        Image.fromarray(pixels).save(root / split / f'class_{k}' / f'{i}.{ext}')
  return str(root)


def stream_config(path, size=32):
  cfg = data.default_config()
  cfg.source = 'image_folder'
  cfg.streaming = True
  cfg.path = path
  cfg.image_size = size
  return cfg


def test_load_lists_paths_only_and_decodes_on_indexing(folder):
  ds = data.load(stream_config(folder))
  assert ds.num_classes == NUM_CLASSES and len(ds.class_names) == NUM_CLASSES
  assert ds.train_images.shape == (40, 32, 32, 3) and ds.test_images.shape == (20, 32, 32, 3)
  assert np.array_equal(np.bincount(ds.train_labels), [4] * NUM_CLASSES)
  batch = ds.test_images[2:5]
  assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
  assert np.array_equal(ds.test_images[np.array([3])][0], ds.test_images[3])
  with pytest.raises(TypeError, match='replicas'):
    np.asarray(ds.train_images)


def test_in_memory_image_folder_stays_the_default():
  cfg = data.default_config()
  assert cfg.streaming is False


def test_random_resized_crop_boxes_follow_torchvision_ranges():
  rng = np.random.default_rng(1)
  for width, height in ((64, 48), (500, 375), (30, 90)):
    for _ in range(200):
      left, top, w, h = streaming.random_resized_crop_box(rng, width, height)
      assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
  # Tries that fit keep area 8..100% and ratio 3/4..4/3 (up to rounding to whole pixels).
  areas, ratios = [], []
  for _ in range(500):
    _, _, w, h = streaming.random_resized_crop_box(rng, 400, 400)
    areas.append(w * h / 400**2)
    ratios.append(w / h)
  assert 0.075 <= min(areas) and max(areas) <= 1.0
  assert 3 / 4 - 0.02 <= min(ratios) and max(ratios) <= 4 / 3 + 0.02
  # A strip no try fits falls back to its centre crop at the nearest allowed ratio.
  assert streaming.random_resized_crop_box(np.random.default_rng(0), 400, 10) == (
      int((400 - round(10 * 4 / 3)) // 2),
      0,
      round(10 * 4 / 3),
      10,
  )


def test_eval_crop_is_resize_shorter_side_then_centre_crop():
  # A smooth image: one resample of the box equals resize-then-crop up to interpolation.
  y, x = np.mgrid[0:120, 0:200]
  pixels = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
  size = 56
  direct = streaming._resample(pixels, streaming.center_crop_box(200, 120), size)
  short = round(size / streaming.EVAL_CROP_FRACTION)  # 64
  resized = np.asarray(
      Image.fromarray(pixels).resize((round(200 * short / 120), short), Image.BILINEAR)
  )
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  reference = resized[top : top + size, left : left + size]
  assert np.abs(direct.astype(int) - reference.astype(int)).mean() < 2.0


def test_processes_decode_disjoint_shards_of_the_same_global_batch(folder):
  ds = data.load(stream_config(folder))
  whole = ds.train_batches(seed=3, global_batch=8)
  halves = [ds.train_batches(3, 8, process_index=p, process_count=2) for p in (0, 1)]
  for step in (0, 4, 5):  # 5 steps per epoch: step 5 is the second epoch's first
    idx = [h.indices(step) for h in halves]
    assert not set(idx[0]) & set(idx[1])
    assert np.array_equal(np.concatenate(idx), whole.indices(step))
    images, labels = whole.batch(step)
    parts = [h.batch(step) for h in halves]
    # The crop of an image depends on (seed, epoch, index), not on who decodes it.
    assert np.array_equal(np.concatenate([p[0] for p in parts]), images)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), labels)
  # A new epoch draws new crops of the same image.
  first = whole.indices(0)
  for step in range(5, 10):
    later = list(whole.indices(step))
    if first[0] in later:
      a = whole.batch(0)[0][0]
      b = whole.batch(step)[0][later.index(first[0])]
      assert not np.array_equal(a, b)
      break


def test_batches_are_a_pure_function_of_the_step_so_resume_replays_them(folder):
  ds = data.load(stream_config(folder))
  run = ds.train_batches(seed=0, global_batch=8)
  seen = [run.batch(s) for s in range(7)]  # in order, with the background prefetch
  resumed = ds.train_batches(seed=0, global_batch=8)  # a fresh process resuming at step 4
  for s in (4, 5, 6):
    images, labels = resumed.batch(s)
    assert np.array_equal(images, seen[s][0]) and np.array_equal(labels, seen[s][1])


def test_grain_gives_the_thread_loaders_batches_and_resumes_on_them(folder):
  """data.loader='grain' (data/grain_batches.py): the same batches bit for bit, in order, from
  a fresh pipeline at step 4 (a resume), and from a worker process."""
  ds = data.load(stream_config(folder))
  threads = ds.train_batches(seed=1, global_batch=8, process_index=1, process_count=2)
  expected = [threads.batch(s) for s in range(7)]
  straight = ds.train_batches(1, 8, 1, 2, loader='grain')
  resumed = ds.train_batches(1, 8, 1, 2, loader='grain')
  workers = ds.train_batches(1, 8, 1, 2, loader='grain', workers=1)
  for s in range(7):
    for loader in (straight, resumed, workers) if s >= 4 else (straight,):
      images, labels = loader.batch(s)
      assert np.array_equal(images, expected[s][0]) and np.array_equal(labels, expected[s][1]), s
  assert np.array_equal(straight.batch(2)[0], expected[2][0])  # a jump back
  with pytest.raises(ValueError, match='loader'):
    ds.train_batches(0, 8, loader='tf.data')


def test_streaming_refuses_archives_and_subsets(folder, tmp_path):
  archive = tmp_path / 'x.tar.gz'
  archive.write_bytes(b'')
  with pytest.raises(ValueError, match='directory'):
    data.load(stream_config(str(archive)))
  cfg = stream_config(folder)
  cfg.train_subset = 10
  with pytest.raises(ValueError, match='train_subset'):
    data.load(cfg)


def test_imagenet_config_is_the_standard_recipe():
  config = imagenet_config.get_config()
  assert config.model == 'resnet50' and config.model_args.stem == 'imagenet'
  assert config.num_epochs == 90 and config.label_smoothing == 0.1
  assert config.learning_rate == pytest.approx(0.1 * config.batch_size / 256)
  assert config.warmup_epochs == 5 and config.schedule == 'cosine'
  assert config.data.streaming and config.dynamics.enabled
  assert config.dynamics.every_steps == 10  # benchmarks/bench_tracker_tpu.py
  big = imagenet_config.get_config('batch=4096')
  assert big.learning_rate == pytest.approx(1.6)


def test_imagenet_config_trains_on_generated_images_and_resumes_on_the_same_batches(
    folder, tmp_path
):
  """configs/imagenet.py through the streaming path, 4 steps straight; and stopped after
  step 2 (the preemption path: a checkpoint, then exit) and resumed: the resumed run decodes
  and crops the same batches, so its losses are the straight run's."""
  from training import loop  # pylint: disable=import-outside-toplevel

  config = imagenet_config.get_config('model=resnet18,batch=8,size=64,every=1')
  config.model_args.width = 8  # the ImageNet stem at a CPU test's width
  config.data.path = folder
  config.num_train_steps = 4
  config.dynamics.probe_size = 8
  config.log_every_steps = 1
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['final_step'] == 4 and summary['finished']
  assert 0 <= summary['eval_accuracy'] <= 100 and math.isfinite(summary['eval_loss'])
  stopped = loop.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_after=2)
  assert stopped['final_step'] == 2 and not stopped['finished']
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['final_step'] == 4 and resumed['finished']
  straight, again = _losses(tmp_path / 'run'), _losses(tmp_path / 'resumed')
  assert len(straight) == len(again) == 4
  np.testing.assert_allclose(again, straight, rtol=1e-6)


def _train_cli(folder, workdir, log_path, env, flags=()):
  """train.py with configs/imagenet.py at CPU-test size, 2 steps (a float32 net, so that one
  process and two agree to rounding)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [
      sys.executable,
      'train.py',
      '--config=configs/imagenet.py:model=resnet18,batch=8,size=64,every=1',
      f'--workdir={workdir}',
      f'--config.data.path={folder}',
      '--config.model_args.width=8',
      '--config.dtype=float32',
      '--config.num_train_steps=2',
      '--config.log_every_steps=1',
      '--config.dynamics.probe_size=8',
      *flags,
  ]
  with open(log_path, 'w') as log:
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r['train/loss'] for r in records if 'train/loss' in r]


def test_imagenet_config_in_two_processes_trains_like_one(folder, tmp_path):
  """Two processes on loopback, one CPU device each, each decoding its half of every batch,
  give the single process's losses (same global batches, same crops)."""
  base = dict(os.environ, JAX_PLATFORMS='cpu')
  single = tmp_path / 'single'
  proc = _train_cli(
      folder,
      single,
      tmp_path / 'single.log',
      dict(base, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
  )
  assert proc.wait(timeout=600) == 0, (tmp_path / 'single.log').read_text()[-3000:]
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  pair = [
      _train_cli(
          folder,
          tmp_path / 'multi',
          tmp_path / f'multi{rank}.log',
          base,
          [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={rank}'],
      )
      for rank in (0, 1)
  ]
  try:
    codes = [p.wait(timeout=600) for p in pair]
  finally:
    for p in pair:
      if p.poll() is None:
        p.kill()
  assert codes == [0, 0], (tmp_path / 'multi0.log').read_text()[-3000:]
  assert 'process 1 of 2' in (tmp_path / 'multi1.log').read_text()
  multi, one = _losses(tmp_path / 'multi'), _losses(single)
  assert len(multi) == len(one) == 2
  np.testing.assert_allclose(multi[0], one[0], rtol=1e-5)
  np.testing.assert_allclose(multi, one, rtol=1e-3)


def test_host_input_bench_measures_a_per_core_rate_and_the_loader(tmp_path):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
  import bench_host_input  # pylint: disable=import-outside-toplevel

  out = tmp_path / 'host.json'
  bench_host_input.main(
      ['--images=8', '--width=64', '--height=48', '--rounds=1', '--batch=4', '--workers=',
       f'--out={out}']
  )  # fmt: skip
  result = json.loads(out.read_text())
  assert result['per_core']['images_per_second'] > 0 and len(result['per_core']['rounds']) == 1
  assert all(rate > 0 for rate in result['loaders'].values())
  assert result['image'] == '64x48 JPEG q90'
