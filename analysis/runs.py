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

A killed or damaged workdir is read as far as it can be: a torn last line of metrics.jsonl (the
normal state after SIGKILL) or any line that is not a JSON record is skipped, and so is an
unreadable dynamics.npz or summary.json; each skip is named, with its reason, in a warning and
in `Run.skipped`. A run whose config.json cannot be read is not a run (`find_runs` names it and
leaves it out; `load_run` raises ValueError naming the file).
"""

import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np
from absl import logging

from dynamics import config as dynamics_config_lib

# Human-readable dataset labels for tables and figures.
DATASET_LABELS = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'config.json'))


def read_config(workdir: str) -> Dict[str, Any]:
  """config.json as a dict; ValueError naming the file and why when it cannot be read."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, 'rb') as f:
      config = json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read ({type(e).__name__}: {e})') from None
  if not isinstance(config, dict):
    raise ValueError(f'{path} cannot be read (a JSON {type(config).__name__}, not an object)')
  return config


def replica_dirs(path: str) -> List[str]:
  """The replica_<k>/ folders of a run of config.replicas > 1, in k order; [] otherwise."""
  try:
    replicas = int(read_config(path).get('replicas', 1))
  except (ValueError, TypeError):
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
    candidates, unreadable = [], []
    for path in matches:
      if is_run_dir(path):
        candidates.append(path)
      elif os.path.isdir(path):
        candidates += [
            os.path.join(path, d)
            for d in sorted(os.listdir(path))
            if is_run_dir(os.path.join(path, d))
        ]
    hits = []
    for path in candidates:
      try:
        read_config(path)
      except ValueError as e:
        logging.warning('Skipped the run %s: %s.', path, e)
        unreadable.append(str(e))
        continue
      hits.extend(_expand(path))
    if not hits:
      raise FileNotFoundError(
          f'--runs={pattern!r} matches no run directory (a directory holding config.json, '
          'or a directory of such directories)'
          + (f'; skipped: {"; ".join(unreadable)}' if unreadable else '')
          + '.'
      )
    found.extend(hits)
  out, seen = [], set()
  for path in found:
    key = os.path.realpath(path)
    if key not in seen:
      seen.add(key)
      out.append(os.path.normpath(path))
  return out


def read_records(workdir: str, skipped: Optional[List[str]] = None) -> List[Dict[str, Any]]:
  """metrics.jsonl as a list of dicts (empty if the file is missing).

  Lines that are not a JSON record with an integer `step` (a torn last line after a kill, a
  damaged or binary file) are skipped; what was skipped, and why, is appended to `skipped`
  (and logged) as one text per file.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  notes = [] if skipped is None else skipped

  def skip(why):
    notes.append(f'{path}: {why}')
    logging.warning('%s: %s', path, why)

  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    skip(f'cannot be read ({type(e).__name__}: {e}); no records')
    return []
  lines = data.split(b'\n')
  torn = lines.pop()  # b'' when the file ends with a newline
  records, bad = [], []
  for number, line in enumerate(lines + ([torn] if torn.strip() else []), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode('utf-8'))
      ok = isinstance(record, dict) and isinstance(record.get('step'), int)
    except ValueError:  # UnicodeDecodeError included
      ok = False
    if ok:
      records.append(record)
    elif line is torn:
      skip(f'the last line ({number}) is cut short (a run killed while writing it); skipped')
    else:
      bad.append(number)
  if bad:
    shown = ', '.join(map(str, bad[:10])) + (f' and {len(bad) - 10} more' if len(bad) > 10 else '')
    skip(
        f'{len(bad)} line(s) are not JSON records with a step ({shown}); skipped, '
        f'{len(records)} record(s) read'
    )
  return records


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
  # Files (or lines) that could not be read and were left out, each with its reason.
  skipped: List[str] = dataclasses.field(default_factory=list)

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


def _read_dynamics(path: str) -> Dict[str, np.ndarray]:
  with np.load(path) as npz:
    return {k: npz[k] for k in npz.files}


def _read_summary(path: str) -> Dict[str, Any]:
  with open(path, 'rb') as f:
    summary = json.loads(f.read().decode('utf-8'))
  if not isinstance(summary, dict):
    raise ValueError(f'a JSON {type(summary).__name__}, not an object')
  return summary


def load_run(workdir: str) -> Run:
  """One workdir; what cannot be read is left out and named in `Run.skipped` (see the module
  docstring). ValueError when config.json cannot be read, FileNotFoundError without one."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{workdir} is not a run directory: no config.json.')
  config = read_config(workdir)
  skipped: List[str] = []
  optional = {}
  for name, read in (('dynamics.npz', _read_dynamics), ('summary.json', _read_summary)):
    path = os.path.join(workdir, name)
    optional[name] = None
    if not os.path.exists(path):
      continue
    try:
      optional[name] = read(path)
    except Exception as e:  # pylint: disable=broad-except  # zip, zlib, pickle, JSON, OS errors
      why = f'cannot be read ({type(e).__name__}: {str(e).strip()[:200] or "empty"}); skipped'
      skipped.append(f'{path}: {why}')
      logging.warning('%s: %s', path, why)
  records = read_records(workdir, skipped)
  return Run(
      workdir=workdir,
      config=config,
      records=records,
      dynamics=optional['dynamics.npz'],
      summary=optional['summary.json'],
      skipped=skipped,
  )
