"""What a run tells its user: run-length checks, auto windows, progress lines, a quiet console
without TensorFlow, one metrics.jsonl row per step, TensorBoard scalars, self-explaining figures.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis import figures, runs as runs_lib
from configs import default, tiny
from dynamics import tracker as tracker_lib
from training import fit as fit_lib, loop, validate, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit(config, train_size=None):
  size = train_size or fit_lib.known_train_size(config)
  return fit_lib.fit_to_run(config, *fit_lib.run_length(config, size))


# --- run length against the metrics ---------------------------------------------------------


def test_min_dfa_length_is_the_first_length_with_three_scales():
  for settings in (
      dict(),
      dict(dfa_min_scale=3, dfa_max_divisor=2),
      dict(dfa_scales='4,8,16'),
      dict(dfa_min_scale=5, dfa_num_scales=4),
  ):
    dcfg = default.get_config().dynamics
    dcfg.update(settings)
    brute = next(n for n in range(1, 10_000) if tracker_lib.resolve_scales(dcfg, n) is not None)
    assert fit_lib.min_dfa_length(dcfg) == brute, settings
  assert fit_lib.min_dfa_length(default.get_config().dynamics) == 24  # README's figure


def test_auto_resolves_to_the_standard_values_on_long_runs():
  config = default.get_config()  # 30 CIFAR epochs: 11,700 steps
  fit = _fit(config)
  assert (fit.config.dynamics.window, fit.config.dynamics.volatility_window_steps) == (256, 50)
  assert fit.config.dynamics.sliding_epochs == 24 and not fit.warnings
  assert config.dynamics.window == 0  # the given config is not changed
  config.num_train_steps = 512
  assert _fit(config).config.dynamics.window == 256
  config.num_train_steps = 511  # shorter than twice the standard window: half the run
  assert _fit(config).config.dynamics.window == 255


def test_a_20_step_run_with_the_default_windows_warns_naming_the_fields():
  config = default.get_config()
  config.num_train_steps = 20  # 1 epoch of CIFAR's 390
  fit = _fit(config)
  text = '\n'.join(fit.warnings)
  assert 'step-mode metrics need a window of at least 24 steps' in text
  assert 'the run has 20 steps (1 epoch(s) of 390)' in text
  assert 'dynamics.dfa_min_scale=4' in text and 'dynamics.dfa_max_divisor=4' in text
  assert 'epoch-mode integration, DSI and convergence need 24 probe samples' in text
  assert '--config.dynamics.dfa_min_scale=3' in text  # the fix
  # The tracker can still be built (the signals are saved for an offline analysis).
  assert fit.config.dynamics.window == 24


def test_a_20_step_run_with_auto_windows_sizes_them_to_the_run():
  config = tiny.get_config()  # DFA scales 3 .. N//2: 10 samples suffice
  config.num_train_steps = 20
  fit = _fit(config)
  assert fit.config.dynamics.window == 10  # half the run
  assert fit.config.dynamics.volatility_window_steps == 5  # half of the 11 computed windows
  assert any('dynamics.window=auto -> 10 steps' in n for n in fit.notes)
  assert not any('step-mode' in w for w in fit.warnings)


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('window', 256, 'dynamics.window=256 but the run has 20 steps'),
        (
            'volatility_window_steps',
            50,
            'dynamics.volatility_window_steps=50 but the run computes '
            'only 11 step-mode DSI values',
        ),
    ],
)
def test_an_explicit_window_longer_than_the_run_is_an_error(field, value, message):
  config = tiny.get_config()
  config.num_train_steps = 20
  if field == 'volatility_window_steps':
    config.dynamics.window = 10
  config.dynamics[field] = value
  with pytest.raises(ValueError) as e:
    _fit(config)
  assert message in str(e.value)
  assert 'allowed:' in str(e.value)


def test_a_phase_edge_too_large_for_the_window_names_phase_edge(tmp_path):
  config = tiny.get_config()
  config.dynamics.window = 12
  config.dynamics.phase_edge = 5
  with pytest.raises(ValueError, match=r'dynamics.phase_edge=5 .* allowed: 0 .. 4'):
    validate.validate_config(config, 1)
  # An auto window: the same check once the window is sized (16 steps -> 10 samples).
  config.dynamics.window = 0
  config.dynamics.phase_edge = 4
  with pytest.raises(ValueError, match=r'dynamics.phase_edge=4 .* allowed: 0 .. 3'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'config.json')  # stopped before anything


def test_image_folder_size_is_only_known_after_loading():
  config = default.get_config()
  config.data.source = 'image_folder'
  assert fit_lib.known_train_size(config) is None
  config.data.train_subset = 1000
  assert fit_lib.known_train_size(config) == 1000


# --- writers ---------------------------------------------------------------------------------


def test_jsonl_merges_a_step_and_truncates_after_a_restored_step(tmp_path):
  w = writers.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write_scalars(1, {'a': 1.0})
  w.write_scalars(1, {'b': 2.0})
  w.write_histograms(1, {'h': np.arange(3.0)})
  w.write_scalars(2, {'a': 3.0})
  w.write_scalars(3, {'a': 4.0})
  w.truncate_after(2)  # the pending record of step 3 is written, then dropped
  w.write_scalars(3, {'a': 5.0})
  w.close()
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert rows == [
      {'step': 1, 'a': 1.0, 'b': 2.0, 'h': [0.0, 1.0, 2.0]},
      {'step': 2, 'a': 3.0},
      {'step': 3, 'a': 5.0},
  ]


def test_logged_convergence_step_is_one_based_like_the_plots():
  dcfg = tiny.get_config().dynamics
  dcfg.window, dcfg.volatility_window_steps = 10, 3
  tracker = tracker_lib.make_tracker(dcfg, {'a': (2, 4)}, 20, 3)
  # The state holds the 0-based series index 211 (dynamics.npz); step 212 is logged, as
  # figures.run_step_dynamics and report.md show index + 1.
  out = tracker.summarize_step({'dynamics/convergence_step': np.int32(211)})
  assert out['dynamics/convergence_step'] == 212
  assert 'dynamics/convergence_step' not in tracker.summarize_step(
      {'dynamics/convergence_step': np.int32(-1)}
  )


# --- one real run, in a subprocess as a user starts it ---------------------------------------

RUN_SCRIPT = """
import runpy, sys
sys.argv = ['train.py', '--config=configs/tiny.py', '--workdir=' + sys.argv[1],
            '--config.num_train_steps=20']
try:
  runpy.run_path('train.py', run_name='__main__')
except SystemExit as e:
  assert not e.code, e.code
print('tensorflow imported:', 'tensorflow' in sys.modules)
"""


@pytest.fixture(scope='module')
def run20(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run20') / 'run')
  env = dict(os.environ, DYNAMICS_XLA_CPU_TUNING='0')
  proc = subprocess.run(
      [sys.executable, '-c', RUN_SCRIPT, workdir],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout + proc.stderr


def test_synthetic_run_does_not_import_tensorflow(run20):
  assert 'tensorflow imported: False' in run20[1]


def test_console_shows_compile_and_epoch_lines_and_no_scalar_dicts(run20):
  out = run20[1]
  assert 'Compiling the train step ...' in out
  assert 'Compiled the train step in' in out
  for epoch in (1, 2, 3):
    assert f'epoch {epoch}/3 (step ' in out
  assert 'dynamics.window=auto -> 10 steps' in out
  assert 'Histogram for' not in out and '[Hyperparameters]' not in out
  assert 'oneDNN' not in out  # no TensorFlow banner
  assert not [line for line in out.splitlines() if not line.strip()]  # no empty lines


def test_metrics_jsonl_has_one_row_per_step_and_auto_windows_computed(run20):
  pd = pytest.importorskip('pandas')
  frame = pd.read_json(os.path.join(run20[0], 'metrics.jsonl'), lines=True)
  assert frame['step'].is_unique
  assert {'train/loss', 'eval/accuracy', 'dynamics/dsi'} <= set(frame.columns)
  assert frame['dynamics/dsi'].notna().any()  # auto window 10: step metrics from step 10 on


def test_tensorboard_reads_the_scalars(run20):
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(run20[0])
  acc.Reload()
  events = acc.Scalars('train/loss')
  rows = [json.loads(line) for line in open(os.path.join(run20[0], 'metrics.jsonl'))]
  logged = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
  assert [e.step for e in events] == sorted(logged)
  np.testing.assert_allclose(
      [e.value for e in events], [logged[s] for s in sorted(logged)], rtol=1e-6
  )
  assert 'dynamics/alpha' in acc.Tags()['histograms']


def test_figures_and_report_say_what_is_not_defined(run20, monkeypatch):
  run = runs_lib.load_run(run20[0])
  texts = []

  def capture(fig, path):
    texts.extend(' '.join(t.get_text().split()) for ax in fig.axes for t in ax.texts)
    texts.append(fig.axes[0].get_title())
    figures.plt.close(fig)

  monkeypatch.setattr(figures, '_save', capture)
  figures.run_epoch_dynamics(run, 'unused.png', min_epochs=10, plateau=-1)
  assert any('not defined: needs 10 epochs (probe samples), has 3' in t for t in texts)
  assert any('resnet18_tiny on synthetic, seed 0' in t for t in texts)
  monkeypatch.undo()
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'analyze.py'), f'--workdir={run20[0]}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = open(os.path.join(run20[0], 'report.md')).read()
  assert 'not defined: needs 10 epochs, has 3' in report
  assert 'Step mode, last window (10 steps' in report
  assert ': .' not in report and ': \n' not in report  # no empty results


def test_a_run_shorter_than_any_step_window_trains_and_says_so(tmp_path):
  config = tiny.get_config()
  config.num_train_steps = 4  # the DFA scales need 10 steps
  config.dynamics.probe_mode = False
  fit = _fit(config)
  assert fit.config.dynamics.window == 10 and fit.warnings
  loop.train_and_evaluate(config, str(tmp_path))  # build() does not re-check the resolved 10
  dyn = np.load(tmp_path / 'dynamics.npz')
  assert dyn['step_signals'].shape[1] == 4 and not np.isfinite(dyn['step_dsi']).any()


def test_train_py_with_replicas_ends_with_each_replicas_accuracy(tmp_path):
  """The console's last lines of `train.py --config.replicas=2`: every replica's accuracy and
  their spread, with no logging error (a list once reached a '%.2f' format)."""
  proc = subprocess.run(
      [
          sys.executable,
          'train.py',
          '--config=configs/tiny.py',
          f'--workdir={tmp_path / "run"}',
          '--config.replicas=2',
          '--config.num_train_steps=4',
          '--config.dynamics.enabled=False',
      ],
      cwd=ROOT,
      env=dict(os.environ, DYNAMICS_XLA_CPU_TUNING='0'),
      capture_output=True,
      text=True,
      timeout=900,
  )
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert 'Logging error' not in out and 'Traceback' not in out, out[-3000:]
  (line,) = [line for line in out.splitlines() if 'Final test accuracy: ' in line]
  assert line.count('%') == 3 and '(replicas 0..1; mean ' in line, line
  assert 'metrics (JSON lines):' in out and 'replica_*/metrics.jsonl' in out
