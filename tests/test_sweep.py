"""sweep.py: the plan (workdirs, commands, hosts), skipping finished runs, surviving a crash."""

import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS, DATASETS, SEEDS = ['resnet18', 'vgg16', 'mobilenetv2'], ['cifar10', 'cifar100'], [0, 1]


def _fake_data_dir(path):
  path.mkdir()
  for dataset in DATASETS:
    (path / f'{dataset}.tar.gz').write_bytes(b'')
  return path


def test_plan_workdirs_commands_and_hosts(tmp_path):
  data_dir = _fake_data_dir(tmp_path / 'data')
  root = tmp_path / 'runs'
  (root / 'cifar100_vgg16_s1').mkdir(parents=True)
  (root / 'cifar100_vgg16_s1' / 'summary.json').write_text('{"finished": true}')
  (root / 'cifar10_resnet18_s0' / 'checkpoints' / '40').mkdir(parents=True)
  jobs = sweep.plan(
      MODELS,
      DATASETS,
      SEEDS,
      'cpu',
      str(root),
      str(data_dir),
      overrides=['num_epochs=2', 'config.dynamics.dsi_form=linear'],
      python='PY',
  )
  assert len(jobs) == len(MODELS) * len(DATASETS) * len(SEEDS)
  seen = set()
  for job in jobs:
    seen.add((job.model, job.dataset, job.seed))
    assert job.workdir == os.path.join(str(root), f'{job.dataset}_{job.model}_s{job.seed}')
    assert job.command[:2] == ['PY', 'train.py']
    assert job.command[2] == (
        f'--config=configs/study.py:model={job.model},'
        f'dataset={job.dataset},scale=cpu,seed={job.seed}'
    )
    assert f'--workdir={job.workdir}' in job.command
    assert '--config.data.source=image_folder' in job.command
    assert f'--config.data.path={data_dir / job.dataset}.tar.gz' in job.command
    assert job.command[-2:] == ['--config.num_epochs=2', '--config.dynamics.dsi_form=linear']
    expected = (
        'finished'
        if job.name == 'cifar100_vgg16_s1'
        else 'resume'
        if job.name == 'cifar10_resnet18_s0'
        else 'new'
    )
    assert job.status == expected, job.name
  assert len(seen) == len(jobs)

  # Hosts: every n-th run, together covering the sweep exactly once.
  for num_hosts in (1, 3, 5):
    names = []
    for host in range(num_hosts):
      split = sweep.plan(
          MODELS, DATASETS, SEEDS, 'cpu', str(root), num_hosts=num_hosts, host_index=host
      )
      mine = [j.name for i, j in enumerate(split) if j.host == host]
      assert mine == [j.name for i, j in enumerate(jobs) if i % num_hosts == host]
      names += mine
    assert sorted(names) == sorted(j.name for j in jobs)

  # Without --data_dir the runs use the config's source (TFDS).
  job = sweep.plan(['vgg16'], ['cifar10'], [0], 'paper', str(root))[0]
  assert not any(a.startswith('--config.data') for a in job.command)
  for kwargs, message in [
      (dict(models=['resnet99']), 'unknown model'),
      (dict(datasets=['mnist']), 'unknown dataset'),
      (dict(host_index=2, num_hosts=2), 'host_index'),
      (dict(data_dir=str(tmp_path)), 'no cifar10.tar.gz'),
  ]:
    args = dict(models=MODELS, datasets=DATASETS, seeds=[0], scale='cpu', root=str(root))
    args.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      sweep.plan(**args)


def test_controls_add_the_constant_rate_cells_with_the_same_seeds(tmp_path):
  data_dir = _fake_data_dir(tmp_path / 'data')
  jobs = sweep.plan(
      ['resnet18', 'vgg16'],
      ['cifar100'],
      [0, 1, 2],
      'cpu30',
      str(tmp_path / 'runs'),
      str(data_dir),
      replicas_per_run=3,
      controls=['resnet18:cifar10'],
      python='PY',
  )
  assert [j.name for j in jobs] == [
      'cifar100_resnet18_s0-2',
      'cifar100_vgg16_s0-2',
      'cifar10_resnet18_constantlr_s0-2',
  ]
  control = jobs[-1]
  assert control.command[2] == (
      '--config=configs/study.py:model=resnet18,dataset=cifar10,scale=cpu30,seed=0,'
      'schedule=constant'
  )
  # The control's dataset need not be among --datasets: its archive is found all the same.
  assert f'--config.data.path={data_dir / "cifar10"}.tar.gz' in control.command
  assert control.command[-1] == '--config.replicas=3'
  for bad in ('resnet18', 'resnet99:cifar10', 'resnet18:mnist'):
    with pytest.raises(ValueError, match='--controls'):
      sweep.plan(['resnet18'], ['cifar10'], [0], 'cpu', str(tmp_path / 'r'), controls=[bad])


def test_study_config_constant_schedule_and_cpu30_scale():
  from configs import study

  config = study.get_config('model=vgg16,dataset=cifar100,scale=cpu30,schedule=constant')
  assert config.schedule == 'constant' and config.warmup_epochs == 0.0
  assert config.learning_rate == 0.05  # the family's peak rate, held
  assert config.num_epochs == 30 and config.data.train_subset == study.CPU30_TRAIN_SUBSET
  assert study.get_config('model=vgg16,dataset=cifar100').schedule == 'cosine'
  with pytest.raises(ValueError, match='schedule'):
    study.get_config('schedule=step')


def test_confirm_design_is_balanced_rounds_with_own_seeds_per_model(tmp_path):
  from configs import study

  runs = study.confirm_runs()
  jobs = sweep.plan([], [], [], 'confirm', str(tmp_path / 'r'), runs=runs)
  assert [j.name for j in jobs][:7] == [
      'cifar10_resnet18_s0',
      'cifar100_resnet18_s0',
      'cifar10_vgg16_s10',
      'cifar100_vgg16_s10',
      'cifar10_resnet18_constantlr_s0',
      'cifar10_vit_tiny_s20',
      'cifar100_vit_tiny_s20',
  ]
  assert len(jobs) == 2 * 2 * 6 + 6 + 2 * 3
  assert all('scale=confirm' in j.command[2] for j in jobs)
  seeds = {}
  for dataset, model, seed, schedule in runs:
    seeds.setdefault((model, schedule), set()).add(seed)
  # No two models share a seed; the control arm has its cosine arm's seeds.
  assert not seeds[('resnet18', 'cosine')] & seeds[('vgg16', 'cosine')]
  assert not seeds[('vit_tiny', 'cosine')] & (
      seeds[('resnet18', 'cosine')] | seeds[('vgg16', 'cosine')]
  )
  assert seeds[('resnet18', 'constant')] == seeds[('resnet18', 'cosine')]
  # Every round k holds seed k of each primary cell before round k + 1 starts.
  order = [(m, s) for _, m, s, sched in runs if m == 'resnet18' and sched == 'cosine']
  assert [s for _, s in order] == sorted(s for _, s in order)


def test_confirm_scale_is_one_sgd_recipe_for_both_cnns():
  from configs import study

  r18 = study.get_config('model=resnet18,dataset=cifar100,scale=confirm,seed=3')
  vgg = study.get_config('model=vgg16,dataset=cifar100,scale=confirm,seed=13')
  for field in (
      'optimizer',
      'learning_rate',
      'momentum',
      'weight_decay',
      'batch_size',
      'schedule',
      'warmup_epochs',
      'num_epochs',
  ):
    assert r18[field] == vgg[field], field
  assert (r18.data.train_subset, r18.data.test_subset) == (10_000, 5_000)
  assert r18.data.seed == 3 and vgg.data.seed == 13  # each seed its own subsets
  assert (r18.model_args.width, vgg.model_args.width) == (16, 24)
  assert 'metastability=phase_joint' in r18.dynamics.surrogate_methods
  assert study.get_config('model=vit_tiny,scale=confirm').optimizer == 'adamw'


def test_a_torn_or_unfinished_summary_does_not_mark_a_run_finished(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  assert sweep.workdir_state(str(run)) == 'new'
  for text in ('{"finished": tr', '', '[]', '{"finished": false}'):
    (run / 'summary.json').write_text(text)
    assert not sweep.summary_complete(str(run)), text
    assert sweep.workdir_state(str(run)) == 'new', text
  (run / 'summary.json').write_text('{"finished": true, "eval_accuracy": 50.0}')
  assert sweep.workdir_state(str(run)) == 'finished'


def _finished_job(tmp_path, name='cifar10_resnet18_s0'):
  workdir = tmp_path / 'runs' / name
  (workdir / 'checkpoints' / '7').mkdir(parents=True)
  (workdir / 'config.json').write_text('{"model": "resnet18"}')
  (workdir / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 2.0}\n')
  np.savez(workdir / 'dynamics.npz', step_signals=np.zeros((2, 3), np.float32))
  (workdir / 'events.out.tfevents.1').write_bytes(b'x')
  (workdir / 'summary.json').write_text('{"finished": true, "eval_accuracy": 71.5, "seconds": 60}')
  return sweep.Job(name, 'resnet18', 'cifar10', 0, str(workdir), [], host=0, status='finished')


def test_export_copies_the_compact_artefacts_once(tmp_path):
  job = _finished_job(tmp_path)
  dest = sweep.export_run(job, str(tmp_path / 'export'))
  assert sorted(os.listdir(dest)) == sorted(sweep.ARTEFACTS)  # no checkpoints, no events
  assert sweep.export_run(job, str(tmp_path / 'export')) is None  # already there
  (tmp_path / 'runs' / job.name / 'summary.json').write_text('{"finished": true, "seconds": 9}')
  assert sweep.export_run(job, str(tmp_path / 'export')) == dest  # a re-run is exported again


def test_commit_export_commits_that_folder_alone(tmp_path):
  repo = tmp_path / 'repo'
  repo.mkdir()
  git = lambda *a: subprocess.run(['git', '-C', str(repo), *a], capture_output=True, text=True)
  git('init', '-q')
  git('config', 'user.email', 't@example.com')
  git('config', 'user.name', 't')
  (repo / 'other.txt').write_text('staged, not part of the export')
  git('add', 'other.txt')
  job = _finished_job(tmp_path)
  dest = sweep.export_run(job, str(repo / 'results' / 'runs'))
  assert sweep.commit_export(dest, 'export one run') == 'committed'
  files = git('show', '--name-only', '--format=', 'HEAD').stdout.split()
  assert sorted(files) == sorted(f'results/runs/{job.name}/{a}' for a in sweep.ARTEFACTS)
  assert 'other.txt' in git('diff', '--cached', '--name-only').stdout  # still only staged


def _sweep(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'sweep.py'), *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def _status(stdout, name):
  """The status column of the final table's row for `name`."""
  rows = [re.match(rf'{name}\s+\d+\s+(.*)$', line) for line in stdout.splitlines()]
  return [row.group(1) for row in rows if row][-1]


def test_dry_run_skips_finished_and_runs_nothing(tmp_path):
  data_dir = _fake_data_dir(tmp_path / 'data')
  root = tmp_path / 'runs'
  (root / 'cifar10_vgg16_s0').mkdir(parents=True)
  (root / 'cifar10_vgg16_s0' / 'summary.json').write_text('{"finished": true}')
  proc = _sweep(
      '--models=resnet18,vgg16',
      '--datasets=cifar10',
      '--seeds=0',
      f'--root={root}',
      f'--data_dir={data_dir}',
      '--dry_run',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _status(proc.stdout, 'cifar10_vgg16_s0').startswith('finished (skipped')
  assert _status(proc.stdout, 'cifar10_resnet18_s0') == 'would start'
  assert 'train.py --config=configs/study.py:model=resnet18,dataset=cifar10' in proc.stdout
  assert sorted(os.listdir(root)) == ['cifar10_vgg16_s0']  # nothing created


def _image_folder_archive(path, classes=4, per_class=(8, 4), size=8):
  rng = np.random.default_rng(0)
  src = path.parent / 'src'
  for split, count in zip(('train', 'test'), per_class):
    for c in range(classes):
      folder = src / 'mini' / split / f'class{c}'
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = np.clip(rng.normal(60 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.png')
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(src / 'mini', arcname='mini')


# Shrinks the study config to seconds: tiny model, 32 images, one epoch of 2 steps, no tracker
# (the sweep is under test here, not the metrics).
TINY = [
    'model=resnet18_tiny',
    'model_args.width=0',
    'data.train_subset=0',
    'data.test_subset=0',
    'num_epochs=1',
    'batch_size=16',
    'eval_batch_size=16',
    'dynamics.enabled=false',
]


def test_sweep_trains_skips_and_survives_a_crash(tmp_path):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  _image_folder_archive(data_dir / 'cifar10.tar.gz')
  (data_dir / 'cifar100.tar.gz').write_bytes(b'not a gzip archive')  # this run crashes
  root = tmp_path / 'runs'
  args = [
      '--models=resnet18',
      '--seeds=0',
      f'--root={root}',
      f'--data_dir={data_dir}',
      f'--override=data.cache_dir={tmp_path / "cache"}',
  ] + [f'--override={o}' for o in TINY]
  proc = _sweep('--datasets=cifar100,cifar10', *args)
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert _status(proc.stdout, 'cifar100_resnet18_s0').startswith('failed (exit')
  assert _status(proc.stdout, 'cifar10_resnet18_s0') == 'done'  # ran after the crash
  done = root / 'cifar10_resnet18_s0'
  for name in ('summary.json', 'metrics.jsonl', 'checkpoints', 'train.log'):
    assert (done / name).exists(), name
  log = (root / 'sweep.log').read_text()
  assert log.count('train.py --config=configs/study.py:model=resnet18') == 2
  assert 'data.path=' + str(data_dir / 'cifar10.tar.gz') in log

  proc = _sweep('--datasets=cifar10', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _status(proc.stdout, 'cifar10_resnet18_s0').startswith('finished (skipped')
