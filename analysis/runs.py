"""A run's workdir, loaded: config, logged metrics, dynamics series, summary.

A workdir written by `training.loop.train_and_evaluate` holds

    config.json     the full config (ml_collections JSON)
    metrics.jsonl   one JSON object per write: {"step": s, "train/loss": ..., "eval/accuracy": ...,
                    "epoch": ..., "dynamics_epoch/integration": ..., lists for histograms}
    dynamics.npz    tracker.export(): per-signal series (`step_signals` f32[S, steps],
                    `probe_signals` f32[S, epochs]), every metric series, names, `config_json`
                    (the dynamics config), `steps_per_epoch`
    summary.json    written last, only when the run finished
    checkpoints/

A run of N > 1 replicas (config.replicas) holds instead `replica_<k>/` for k = 0..N-1, each
with the files above but checkpoints/ (its config.json is that of the 1-replica run it equals,
seed + k): every replica is a seed of its cell, and `find_runs` lists the replicas in place of
the run.

`find_runs` expands directories and globs into workdirs; `load_run` reads one.
"""

import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from dynamics import config as dynamics_config_lib

# Human-readable dataset labels for tables and figures.
DATASET_LABELS = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'config.json'))


def replica_dirs(path: str) -> List[str]:
  """The replica_<k>/ folders of a run of config.replicas > 1, in k order; [] otherwise."""
  try:
    with open(os.path.join(path, 'config.json')) as f:
      replicas = int(json.load(f).get('replicas', 1))
  except (OSError, ValueError):
    return []
  if replicas <= 1:
    return []
  return [
      os.path.join(path, f'replica_{k}')
      for k in range(replicas)
      if is_run_dir(os.path.join(path, f'replica_{k}'))
  ]


def _expand(path: str) -> List[str]:
  return replica_dirs(path) or [path]


def find_runs(patterns: Sequence[str]) -> List[str]:
  """Workdirs named by `patterns` (directories or globs), sorted, without duplicates.

  A pattern matching a run directory (one with config.json) gives that run; one matching a
  directory of runs gives each run directly below it (e.g. `runs/cpu` -> `runs/cpu/*`).
  """
  found = []
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]
    hits = []
    for path in matches:
      if is_run_dir(path):
        hits.extend(_expand(path))
      elif os.path.isdir(path):
        for d in sorted(os.listdir(path)):
          if is_run_dir(os.path.join(path, d)):
            hits.extend(_expand(os.path.join(path, d)))
    if not hits:
      raise FileNotFoundError(
          f'--runs={pattern!r} matches no run directory (a directory holding config.json, '
          'or a directory of such directories).'
      )
    found.extend(hits)
  out, seen = [], set()
  for path in found:
    key = os.path.realpath(path)
    if key not in seen:
      seen.add(key)
      out.append(os.path.normpath(path))
  return out


def read_records(workdir: str) -> List[Dict[str, Any]]:
  """metrics.jsonl as a list of dicts (empty if the file is missing)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def scalar_series(records: Sequence[Dict[str, Any]]) -> Dict[str, np.ndarray]:
  """{name: f64[K, 2] rows of (step, value)} for every scalar in the records."""
  series: Dict[str, List] = {}
  for record in records:
    step = record['step']
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
        series.setdefault(key, []).append((step, value))
  return {k: np.asarray(v, np.float64) for k, v in series.items()}


def dynamics_config(config_json: Optional[str] = None) -> ml_collections.ConfigDict:
  """The dynamics config of a run: the current defaults updated with the saved JSON.

  Fields added to the project after the run was trained keep their defaults.
  """
  dcfg = dynamics_config_lib.default_config()
  if config_json:
    saved = json.loads(config_json)
    with dcfg.unlocked():
      for key, value in saved.items():
        if key in dcfg and isinstance(dcfg[key], float) and isinstance(value, int):
          value = float(value)
        dcfg[key] = value
  return dcfg


@dataclasses.dataclass
class Run:
  """One workdir, loaded. Epoch arrays are indexed by epoch - 1."""

  workdir: str
  config: Dict[str, Any]
  records: List[Dict[str, Any]]
  dynamics: Optional[Dict[str, np.ndarray]]
  summary: Optional[Dict[str, Any]]

  @property
  def name(self) -> str:
    """The folder's name; a replica is named `<run>/replica_<k>`."""
    path = os.path.normpath(self.workdir)
    if self.replica is not None:
      return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    return os.path.basename(path)

  @property
  def replica(self) -> Optional[int]:
    """k for replica k of a replicated run (its seed is the run's seed + k), else None."""
    marker = self.config.get('replica_of')
    return int(marker['replica']) if marker else None

  @property
  def model(self) -> str:
    return str(self.config.get('model', '?'))

  @property
  def source(self) -> str:
    return str(self.config.get('data', {}).get('source', '?'))

  @property
  def dataset(self) -> str:
    """data.name, or 'synthetic' for the synthetic source (whatever its nominal name)."""
    return (
        'synthetic'
        if self.source == 'synthetic'
        else str(self.config.get('data', {}).get('name', '?'))
    )

  @property
  def dataset_label(self) -> str:
    return DATASET_LABELS.get(self.dataset, self.dataset)

  @property
  def is_control(self) -> bool:
    """A constant-learning-rate run (schedule 'constant'): the study report's control for
    finding 2, kept out of the architecture comparisons."""
    return str(self.config.get('schedule', 'cosine')) == 'constant'

  @property
  def seed(self) -> int:
    return int(self.config.get('seed', 0))

  @property
  def finished(self) -> bool:
    return self.summary is not None and bool(self.summary.get('finished', True))

  @property
  def has_probe(self) -> bool:
    return self.dynamics is not None and 'probe_signals' in self.dynamics

  @property
  def has_step(self) -> bool:
    return self.dynamics is not None and 'step_signals' in self.dynamics

  def dynamics_config(self) -> ml_collections.ConfigDict:
    """The definition the run's tracker used (from dynamics.npz, else config.json)."""
    if self.dynamics is not None and 'config_json' in self.dynamics:
      return dynamics_config(str(self.dynamics['config_json']))
    return dynamics_config(json.dumps(self.config.get('dynamics', {})))

  def scalars(self) -> Dict[str, np.ndarray]:
    return scalar_series(self.records)

  def epoch_values(self, key: str) -> np.ndarray:
    """f64[E]: `key` from the evaluation records, by epoch (NaN where missing)."""
    by_epoch = {}
    for record in self.records:
      if 'epoch' in record and key in record:
        by_epoch[int(record['epoch'])] = float(record[key])  # the last write of an epoch wins
    if not by_epoch:
      return np.zeros((0,), np.float64)
    out = np.full(max(by_epoch), np.nan)
    for epoch, value in by_epoch.items():
      out[epoch - 1] = value
    return out

  @property
  def test_accuracy(self) -> np.ndarray:
    return self.epoch_values('eval/accuracy')

  @property
  def num_epochs(self) -> int:
    """Epochs the run was configured for."""
    steps = int(self.config.get('num_train_steps', -1))
    spe = self.steps_per_epoch
    if steps > 0 and spe:
      return int(np.ceil(steps / spe))
    return int(self.config.get('num_epochs', 0))

  @property
  def steps_per_epoch(self) -> Optional[int]:
    if self.dynamics is not None and 'steps_per_epoch' in self.dynamics:
      return int(self.dynamics['steps_per_epoch'])
    for record in self.records:
      if record.get('epoch'):
        return int(record['step']) // int(record['epoch'])
    return None


def load_run(workdir: str) -> Run:
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{workdir} is not a run directory: no config.json.')
  with open(config_path) as f:
    config = json.load(f)
  dyn_path = os.path.join(workdir, 'dynamics.npz')
  dynamics = None
  if os.path.exists(dyn_path):
    with np.load(dyn_path) as npz:
      dynamics = {k: npz[k] for k in npz.files}
  summary = None
  summary_path = os.path.join(workdir, 'summary.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  return Run(
      workdir=workdir,
      config=config,
      records=read_records(workdir),
      dynamics=dynamics,
      summary=summary,
  )
