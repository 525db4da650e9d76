"""The confirmatory study's pre-registered analysis (analysis/confirm.py) on fabricated runs.

One tiny run is trained once; the study's 36 planned runs are copies of it, relabelled as the
design's cells, with their recorded series replaced so that each finding's answer is known:
finding 1 gets random-walk step signals on CIFAR-10 and white noise on CIFAR-100 (alpha about
1.5 against 0.5), or white noise on both; finding 2 a detector that knows 3 epochs before the
plateau; finding 3 step-series integration offset between the two CNNs.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sweep
from analysis import confirm
from configs import study, tiny
from training import loop

EPOCHS, STEPS_PER_EPOCH = 14, 8
PLATEAU = 8  # 0-based epoch from which the fabricated accuracy is flat


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  config = tiny.get_config()
  config.num_epochs = EPOCHS
  config.log_every_steps = 4
  for key, value in dict(
      dfa_min_scale=3,
      dfa_max_divisor=2,
      sliding_epochs=10,
      volatility_window_epochs=3,
      convergence_warmup_epochs=2,
      window=16,
      volatility_window_steps=4,
  ).items():
    config.dynamics[key] = value
  workdir = str(tmp_path_factory.mktemp('source') / 'run')
  loop.train_and_evaluate(config, workdir)
  return workdir


def _accuracy(dataset, rng):
  top = 75.0 if dataset == 'cifar10' else 35.0
  curve = np.minimum(np.linspace(10, top, PLATEAU + 1).tolist() + [top] * EPOCHS, top)[:EPOCHS]
  return curve + rng.normal(0, 0.1, EPOCHS)


def fabricate(source, root, same_integration=False, drop=(), low_accuracy=()):
  """The design's planned runs under root/, with known answers (see the module docstring)."""
  rng = np.random.default_rng(0)
  for dataset, model, seed, schedule in study.confirm_runs():
    name = sweep.run_name(dataset, model, seed, 1, schedule)
    if name in drop:
      continue
    dst = os.path.join(root, name)
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns('checkpoints', 'events.*'))
    with open(os.path.join(dst, 'config.json')) as f:
      config = json.load(f)
    config.update(model=model, seed=seed, schedule=schedule)
    config['data'].update(name=dataset, source='image_folder')
    with open(os.path.join(dst, 'config.json'), 'w') as f:
      json.dump(config, f)
    dyn = dict(np.load(os.path.join(dst, 'dynamics.npz')))
    signals = dyn['step_signals']
    noise = rng.standard_normal(signals.shape).astype(np.float32)
    walk = dataset == 'cifar10' and not same_integration
    dyn['step_signals'] = np.cumsum(noise, axis=1) if walk else noise
    if model == 'vgg16':  # finding 3: the two CNNs' step trajectories apart
      dyn['step_integration'] = dyn['step_integration'] + np.float32(0.5)
    # finding 2: the step detector's streak starts so that the rule knows 3 epochs early.
    dyn['step_convergence'] = np.asarray((PLATEAU - 3) * STEPS_PER_EPOCH, np.int32)
    np.savez(os.path.join(dst, 'dynamics.npz'), **dyn)
    acc = _accuracy(dataset, rng) - (20.0 if (model, dataset) in low_accuracy else 0.0)
    with open(os.path.join(dst, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    for record in records:
      if 'eval/accuracy' in record:
        record['eval/accuracy'] = float(acc[record['epoch'] - 1])
    with open(os.path.join(dst, 'metrics.jsonl'), 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
    with open(os.path.join(dst, 'summary.json')) as f:
      summary = json.load(f)
    summary['eval_accuracy'] = float(acc[-1])
    with open(os.path.join(dst, 'summary.json'), 'w') as f:
      json.dump(summary, f)
  return root


def _verdict(text, finding):
  section = text.split(f'## Finding {finding}')[1].split('## ')[0]
  return section.split('Verdict: **')[1].split('**')[0]


def test_whole_run_integration_known_answers():
  rng = np.random.default_rng(1)
  white = rng.standard_normal((6, 2000)).astype(np.float32)
  walk = np.cumsum(white, axis=1)
  assert abs(confirm.whole_run_integration(white)[0] - 0.5) < 0.08
  assert abs(confirm.whole_run_integration(walk)[0] - 1.5) < 0.1
  const = np.vstack([white[:5], np.ones((1, 2000), np.float32)])
  value, dropped = confirm.whole_run_integration(const)
  assert dropped == 1 and np.isfinite(value)


def test_causal_epoch_adds_the_patience():
  # Streak from step 13 with patience 3: the rule knows at step 15, in epoch 1 (8 per epoch).
  assert confirm._causal_epoch(13, 3, 1, 8) == 1
  assert confirm._causal_epoch(14, 3, 1, 8) == 2
  assert confirm._causal_epoch(-1, 3, 1, 8) is None


def test_every_finding_holds_where_it_was_built_in(source_run, tmp_path):
  runs = fabricate(source_run, str(tmp_path / 'runs'))
  path = confirm.build_report(
      sorted(os.path.join(runs, d) for d in os.listdir(runs)), str(tmp_path / 'out')
  )
  text = open(path).read()
  assert 'Status: **complete**' in text
  assert _verdict(text, 1) == 'holds'
  assert 'exact p' in text and f'{2 / 924:.4f}' in text  # the smallest exact p of 6 + 6 runs
  assert _verdict(text, 2) == 'holds'
  assert _verdict(text, 3) == 'holds'
  assert len(confirm.runs_in_report(path)) == 36
  for figure in ('finding1_integration.png', 'finding2_leads.png', 'training_curves.png'):
    assert os.path.exists(tmp_path / 'out' / 'figures' / figure)


def test_no_difference_gives_does_not_hold_and_missing_runs_give_pending(source_run, tmp_path):
  runs = fabricate(source_run, str(tmp_path / 'same'), same_integration=True)
  path = confirm.build_report(
      sorted(os.path.join(runs, d) for d in os.listdir(runs)), str(tmp_path / 'o1')
  )
  assert _verdict(open(path).read(), 1) == 'does not hold'  # TOST within 0.10 on white noise

  runs = fabricate(source_run, str(tmp_path / 'part'), drop=('cifar100_vgg16_s15',))
  path = confirm.build_report(
      sorted(os.path.join(runs, d) for d in os.listdir(runs)), str(tmp_path / 'o2')
  )
  text = open(path).read()
  assert 'interim: 35 of 36' in text
  for finding in (1, 2, 3):
    assert _verdict(text, finding).startswith('pending'), finding
  assert 'cifar100_vgg16_s15' in text.split('Planned runs not (yet) in')[1].splitlines()[0]


def test_a_cell_below_the_accuracy_gate_is_not_evidence(source_run, tmp_path):
  runs = fabricate(source_run, str(tmp_path / 'low'), low_accuracy={('vgg16', 'cifar100')})
  path = confirm.build_report(
      sorted(os.path.join(runs, d) for d in os.listdir(runs)), str(tmp_path / 'o')
  )
  text = open(path).read()
  assert 'FAILS (≥ 30%)' in text
  assert _verdict(text, 1).startswith('not shown: VGG-16 below the accuracy gate')
  assert _verdict(text, 3).startswith('not shown')


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = 'python analyze.py --runs=results/confirm/runs --out=results/confirm'


def test_analyze_py_takes_the_plan_when_a_plan_lies_beside_the_runs(source_run, tmp_path):
  study_dir = tmp_path / 'results' / 'x'
  fabricate(source_run, str(study_dir / 'runs'), drop=('cifar10_vit_tiny_s22',))
  (study_dir / 'PLAN.md').write_text('# plan\n')
  proc = subprocess.run(
      [sys.executable, 'analyze.py', f'--runs={study_dir / "runs"}', f'--out={tmp_path / "o"}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'PLAN.md' in proc.stdout
  text = (tmp_path / 'o' / 'report.md').read_text()
  assert text.startswith('# Confirmatory study: report')
  assert 'interim: 35 of 36' in text
  assert _verdict(text, 1) == 'holds'  # the third family is not needed for the primary tests


def test_the_committed_report_regenerates_from_the_committed_runs(tmp_path):
  """results/confirm/report.md equals a report generated now from the runs it names."""
  committed = os.path.join(ROOT, 'results', 'confirm', 'report.md')
  names = confirm.runs_in_report(committed)
  workdirs = [os.path.join(ROOT, 'results', 'confirm', 'runs', n) for n in names]
  out = confirm.build_report(workdirs, str(tmp_path), command=COMMAND)
  with open(out) as a, open(committed) as b:
    assert a.read() == b.read()


def test_the_study_reports_seed_count_leaves_out_the_control_runs():
  from analysis import definitions as definitions_lib, runs as runs_lib

  def run(seed, schedule):
    config = dict(model='resnet18', seed=seed, schedule=schedule, data=dict(name='cifar10'))
    return runs_lib.Run('w', config, [], None, None)

  runs = [run(s, 'cosine') for s in range(3)] + [run(s, 'constant') for s in range(3)]
  assert definitions_lib._seed_counts(runs) == {('resnet18', 'cifar10'): 3}


def test_ablation_grid_gives_each_findings_verdict_under_every_definition(source_run, tmp_path):
  from analysis import grid_report

  study_dir = tmp_path / 'results' / 'x'
  fabricate(source_run, str(study_dir / 'runs'))
  (study_dir / 'PLAN.md').write_text('# plan\n')
  path = grid_report.run_job(
      [str(study_dir / 'runs')], ['convergence_rho=0.25,0.5'], str(tmp_path / 'abl')
  )
  text = open(path).read()
  section = text.split('## Findings across definitions (multiverse)')[1]
  rows = [
      line for line in section.splitlines() if line.startswith('| logged') or 'rho=0.5 |' in line
  ]
  assert len(rows) == 2
  for row in rows:  # finding 1 and 3 do not depend on the detector's rho
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1].startswith('holds (ResNet-18 p = '), row
    assert cells[3].startswith('holds (CIFAR-10 p = '), row
  assert '- Finding 1: "holds" under 2 of 2.' in text
