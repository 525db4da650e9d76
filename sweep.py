r"""Runs the study's training runs one after another: every model x dataset x seed.

  python sweep.py --models=resnet18,vgg16,mobilenetv2 --datasets=cifar10,cifar100 --scale=cpu \
      --seeds=0 --root=runs/cpu --data_dir=../shared/data
  python sweep.py ... --host_index=1 --num_hosts=4   # this machine takes runs 1, 5, 9, ...
  python sweep.py ... --dry_run                      # print the plan and the commands only

Each run is `python train.py --config=configs/study.py:model=M,dataset=D,scale=S,seed=K
--workdir=<root>/<D>_<M>_s<K> [--config.<field>=<value> ...]` in its own subprocess (a crash in
one run does not stop the sweep), with its output shown and appended to <workdir>/train.log;
every command is appended to <root>/sweep.log. A run whose workdir holds summary.json is
finished and skipped; an interrupted one resumes from its newest checkpoint (the training loop
does that by itself). With --data_dir the runs read the offline archives
<data_dir>/<dataset>.tar.gz (data.source=image_folder); without it, TFDS. `--override
field=value` (repeatable) passes --config.field=value to every run. At the end a table says what
happened to each run. Exit status: 0 all done; 1 some run failed; 143 a preemption notice
(SIGTERM) or Ctrl-C stopped the current run after its checkpoint (the sweep stops; the same
command resumes it). A finished run is skipped even if the overrides changed since: use a new
--root for a changed study (an unfinished run of a different config refuses to resume).

`--replicas_per_run=R` packs consecutive seeds into one run of R replicas (config.replicas,
seeds trained together in one compiled program): `--seeds=0,1,2,3 --replicas_per_run=4` is one
run `<D>_<M>_s0-3` whose replica_<k>/ is seed k; the analysis reads each replica as a seed.

Then: python analyze.py --runs=<root> --out=<report dir>
"""

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

from absl import app, flags

ROOT = os.path.dirname(os.path.abspath(__file__))
TRAIN = 'train.py'
STUDY_CONFIG = 'configs/study.py'

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a script (importing sweep defines none)."""
  flags.DEFINE_list('models', ['resnet18', 'vgg16', 'mobilenetv2'], 'configs/study.py models.')
  flags.DEFINE_list('datasets', ['cifar10', 'cifar100'], 'configs/study.py datasets.')
  flags.DEFINE_enum('scale', 'cpu', ['cpu', 'cpu30', 'confirm', 'paper'], 'configs/study.py scale.')
  flags.DEFINE_enum(
      'design',
      'grid',
      ['grid', 'confirm'],
      'grid: --models x --datasets x --seeds (+ --controls); confirm: the confirmatory '
      "study's runs as configs/study.py confirm_runs() lists them (scale=confirm; --models, "
      '--datasets, --seeds and --controls are ignored).',
  )
  flags.DEFINE_string(
      'export',
      '',
      "Copy each finished run's compact artefacts (config.json, summary.json, metrics.jsonl, "
      'dynamics.npz: what analyze.py reads) to <export>/<run>/ as soon as it finishes.',
  )
  flags.DEFINE_bool(
      'commit',
      False,
      'With --export: git-commit each exported run at once (only that folder), so a study '
      'accumulates in the repository across interruptions.',
  )
  flags.DEFINE_list('seeds', ['0'], 'Seeds (integers).')
  flags.DEFINE_integer(
      'replicas_per_run',
      1,
      'Pack this many consecutive seeds into one run ' '(config.replicas); 1: one run per seed.',
  )
  flags.DEFINE_list(
      'controls',
      [],
      'model:dataset cells also run as the constant-learning-rate control of finding 2 '
      '(configs/study.py schedule=constant), with the same seeds, e.g. resnet18:cifar10.',
  )
  flags.DEFINE_string('root', None, 'Parent directory of the run workdirs.')
  flags.DEFINE_string(
      'data_dir',
      '',
      'Directory holding <dataset>.tar.gz image-folder ' 'archives (offline); empty: TFDS.',
  )
  flags.DEFINE_integer(
      'host_index', 0, 'This host takes the runs i with i % num_hosts == ' 'host_index.'
  )
  flags.DEFINE_integer('num_hosts', 1, 'Number of hosts sharing the sweep.')
  flags.DEFINE_multi_string(
      'override', [], 'field=value, passed to every run as ' '--config.field=value (repeatable).'
  )
  flags.DEFINE_bool('dry_run', False, 'Print the plan and the commands; run nothing.')
  flags.DEFINE_string('python', sys.executable, 'Python interpreter for the runs.')
  flags.mark_flag_as_required('root')


@dataclasses.dataclass
class Job:
  name: str
  model: str
  dataset: str
  seed: int  # the first seed; the run trains seed .. seed + replicas - 1
  workdir: str
  command: List[str]
  host: int
  replicas: int = 1
  status: str = ''  # set by plan() (finished / resume / new), then by run()

  @property
  def finished(self) -> bool:
    return summary_complete(self.workdir)


def summary_complete(workdir: str) -> bool:
  """True when <workdir>/summary.json parses and says the run finished (a torn or partial
  file, e.g. from a disk that filled, does not mark a run done)."""
  try:
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(summary, dict) and bool(summary.get('finished', False))


def run_name(
    dataset: str, model: str, seed: int, replicas: int = 1, schedule: str = 'cosine'
) -> str:
  tag = '' if schedule == 'cosine' else f'_{schedule}lr'
  seeds = f's{seed}' if replicas == 1 else f's{seed}-{seed + replicas - 1}'
  return f'{dataset}_{model}{tag}_{seeds}'


def parse_controls(controls: Sequence[str]) -> List[Tuple[str, str]]:
  """'model:dataset' items -> [(dataset, model)], each checked against configs/study.py."""
  from configs import study  # pylint: disable=g-import-not-at-top

  cells = []
  for item in controls:
    model, sep, dataset = item.partition(':')
    if not sep or model not in study.MODELS or dataset not in study.DATASETS:
      raise ValueError(
          f'--controls: {item!r} is not model:dataset with a configs/study.py model and '
          f'dataset (e.g. resnet18:cifar10).'
      )
    cells.append((dataset, model))
  return cells


def seed_groups(seeds: Sequence[int], replicas_per_run: int) -> List[Tuple[int, int]]:
  """(first seed, replicas) of each run: the seeds in order, cut into runs of
  replicas_per_run consecutive seeds (the last may be shorter)."""
  if replicas_per_run < 1:
    raise ValueError(f'--replicas_per_run={replicas_per_run} must be >= 1.')
  seeds = sorted(int(s) for s in seeds)
  groups = []
  for i in range(0, len(seeds), replicas_per_run):
    chunk = seeds[i : i + replicas_per_run]
    if chunk != list(range(chunk[0], chunk[0] + len(chunk))):
      raise ValueError(
          f'--seeds: {chunk} would share a run, but a run of replicas trains consecutive seeds '
          f'(seed, seed + 1, ...); give consecutive --seeds or lower --replicas_per_run='
          f'{replicas_per_run}.'
      )
    groups.append((chunk[0], len(chunk)))
  return groups


def workdir_state(workdir: str) -> str:
  """'finished' (a complete summary.json), 'resume' (checkpoints, unfinished) or 'new'."""
  if summary_complete(workdir):
    return 'finished'
  ckpt = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
    return 'resume'
  return 'new'


def _override_flag(item: str) -> str:
  field, sep, value = item.partition('=')
  field = field.strip()
  if field.startswith('--'):
    field = field[2:]
  if field.startswith('config.'):
    field = field[len('config.') :]
  if not sep or not field:
    raise ValueError(f'--override {item!r}: expected field=value, e.g. num_epochs=2.')
  return f'--config.{field}={value}'


def plan(
    models: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    scale: str,
    root: str,
    data_dir: str = '',
    overrides: Sequence[str] = (),
    host_index: int = 0,
    num_hosts: int = 1,
    python: str = sys.executable,
    replicas_per_run: int = 1,
    controls: Sequence[str] = (),
    runs: Optional[Sequence[Tuple[str, str, int, str]]] = None,
) -> List[Job]:
  """Every run of the sweep, in order (seed, then dataset, then model, then the
  constant-learning-rate controls), with its command.

  With replicas_per_run > 1, consecutive seeds share a run (see seed_groups). `controls`
  ('model:dataset') adds those cells again with configs/study.py schedule=constant.
  `runs` ((dataset, model, seed, schedule), e.g. configs/study.py confirm_runs()) replaces
  the grid of models, datasets, seeds and controls with exactly these runs, in this order.

  Run i belongs to host i % num_hosts. Paths in the commands are absolute, except train.py
  and the config, which are relative to the repository root (the runs' working directory).
  """
  from configs import study  # pylint: disable=g-import-not-at-top

  for model in models:
    if model not in study.MODELS:
      raise ValueError(f'--models: unknown model {model!r}; allowed: {", ".join(study.MODELS)}.')
  for dataset in datasets:
    if dataset not in study.DATASETS:
      raise ValueError(
          f'--datasets: unknown dataset {dataset!r}; allowed: ' f'{", ".join(study.DATASETS)}.'
      )
  if num_hosts < 1 or not 0 <= host_index < num_hosts:
    raise ValueError(f'--host_index={host_index} must be in [0, --num_hosts={num_hosts}).')
  root = os.path.abspath(root)
  control_cells = parse_controls(controls)
  if runs is None:
    groups = (
        seed_groups(seeds, replicas_per_run)
        if replicas_per_run > 1
        else [(int(s), 1) for s in seeds]
    )
    runs = []
    for seed, replicas in groups:
      cells = [(d, m, 'cosine') for d in datasets for m in models]
      cells += [(d, m, 'constant') for d, m in control_cells]
      runs += [(d, m, seed, replicas, schedule) for d, m, schedule in cells]
  else:
    runs = [(d, m, int(seed), 1, schedule) for d, m, seed, schedule in runs]
  data_flags = {}
  if data_dir:
    for dataset in sorted({r[0] for r in runs}):
      archive = os.path.abspath(os.path.join(data_dir, f'{dataset}.tar.gz'))
      if not os.path.exists(archive):
        raise FileNotFoundError(f'--data_dir={data_dir}: no {dataset}.tar.gz there ({archive}).')
      data_flags[dataset] = ['--config.data.source=image_folder', f'--config.data.path={archive}']
  extra = [_override_flag(o) for o in overrides]
  jobs = []
  for dataset, model, seed, replicas, schedule in runs:
    name = run_name(dataset, model, seed, replicas, schedule)
    workdir = os.path.join(root, name)
    schedule_arg = '' if schedule == 'cosine' else f',schedule={schedule}'
    command = (
        [
            python,
            TRAIN,
            f'--config={STUDY_CONFIG}:model={model},dataset={dataset},scale={scale},'
            f'seed={seed}{schedule_arg}',
            f'--workdir={workdir}',
        ]
        + data_flags.get(dataset, [])
        + extra
    )
    if replicas > 1:
      command.append(f'--config.replicas={replicas}')
    jobs.append(
        Job(
            name,
            model,
            dataset,
            int(seed),
            workdir,
            command,
            host=len(jobs) % num_hosts,
            status=workdir_state(workdir),
            replicas=replicas,
        )
    )
  return jobs


def _log(root: str, text: str):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'sweep.log'), 'a') as f:
    f.write(text + '\n')


# train.py's exit status after a preemption notice (SIGTERM): it saved a checkpoint first.
PREEMPTED_EXIT_CODE = 143


def run(job: Job, root: str) -> str:
  """Runs one job in a subprocess (output shown and appended to <workdir>/train.log).

  The run gets its own session, and a SIGTERM (preemption notice) or Ctrl-C sent to the sweep
  is passed on to it as one SIGTERM, so it saves a checkpoint before it exits.
  """
  os.makedirs(job.workdir, exist_ok=True)
  line = shlex.join(job.command)
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  _log(root, f'{stamp} {job.name} ({job.status}): cd {shlex.quote(ROOT)} && {line}')
  print(
      f'\n=== {job.name}: {"resuming" if job.status == "resume" else "starting"}\n{line}\n',
      flush=True,
  )
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  stopped = []
  with open(os.path.join(job.workdir, 'train.log'), 'a') as log:
    log.write(f'\n=== {stamp} {line}\n')
    proc = subprocess.Popen(
        job.command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )

    def stop(signum, frame):
      del frame
      if not stopped and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
      stopped.append(signum)

    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      for out in proc.stdout:
        sys.stdout.write(out)
        log.write(out)
      rc = proc.wait()
    finally:
      for sig, handler in handlers.items():
        signal.signal(sig, handler)
  if rc == PREEMPTED_EXIT_CODE or stopped:
    status = f'stopped (exit {rc}; checkpoint saved, run the sweep again to resume)'
  elif rc != 0:
    status = f'failed (exit {rc}; see {os.path.join(job.workdir, "train.log")})'
  elif job.finished:
    status = 'done' if job.status == 'new' else 'done (resumed)'
  else:
    status = 'incomplete (exit 0 without summary.json)'
  _log(root, f'{datetime.datetime.now().isoformat(timespec="seconds")} {job.name}: {status}')
  return status


# What analyze.py reads from a run (analysis/runs.py): a run's compact artefacts.
ARTEFACTS = ('config.json', 'summary.json', 'metrics.jsonl', 'dynamics.npz')


def export_run(job: Job, export_root: str) -> Optional[str]:
  """Copies a finished run's compact artefacts (and each replica's) to <export_root>/<name>/.

  Files go through a temporary name and a rename, summary.json last, so an interrupted export
  never looks finished. Returns the folder, or None when it already holds this run (same
  summary.json) and nothing was copied.
  """
  dest = os.path.join(os.path.abspath(export_root), job.name)
  src_summary = os.path.join(job.workdir, 'summary.json')
  dest_summary = os.path.join(dest, 'summary.json')
  if os.path.exists(dest_summary):
    with open(src_summary, 'rb') as a, open(dest_summary, 'rb') as b:
      if a.read() == b.read():
        return None
  subdirs = [''] + sorted(
      d for d in os.listdir(job.workdir) if d.startswith('replica_') and d[8:].isdigit()
  )
  for sub in subdirs:
    os.makedirs(os.path.join(dest, sub), exist_ok=True)
    for name in ARTEFACTS:
      src = os.path.join(job.workdir, sub, name)
      if os.path.exists(src):
        out = os.path.join(dest, sub, name)
        shutil.copyfile(src, out + '.tmp')
        os.replace(out + '.tmp', out)
  # summary.json again, last of all: its presence marks a complete export.
  shutil.copyfile(src_summary, dest_summary + '.tmp')
  os.replace(dest_summary + '.tmp', dest_summary)
  return dest


def commit_export(folder: str, message: str) -> str:
  """git add + commit of `folder` alone (other staged changes are left out) in the repository
  that holds `folder` (which need not be the one this sweep runs from); the outcome."""
  git = ['git', '-C', os.path.dirname(os.path.abspath(folder))]
  for attempt in range(5):  # another git process may hold the index for a moment
    add = subprocess.run(git + ['add', '--', folder], capture_output=True, text=True)
    done = add.returncode == 0 and subprocess.run(
        git + ['commit', '-q', '-m', message, '--', folder], capture_output=True, text=True
    )
    if done and done.returncode == 0:
      return 'committed'
    err = (add.stderr if add.returncode else done.stderr + done.stdout).strip()
    if 'index.lock' not in err:
      return f'not committed ({err.splitlines()[-1] if err else "git failed"})'
    time.sleep(2 + 2 * attempt)
  return 'not committed (the git index stayed locked)'


def publish(job: Job, export_root: str, commit: bool, root: str) -> None:
  """Exports a finished job (and commits it with --commit); logs what happened."""
  if not export_root or not job.finished:
    return
  dest = export_run(job, export_root)
  if dest is None:
    return
  outcome = 'exported'
  if commit:
    with open(os.path.join(job.workdir, 'summary.json')) as f:
      summary = json.load(f)
    acc = summary.get('eval_accuracy')
    acc = f', test accuracy {acc:.2f}%' if isinstance(acc, (int, float)) else ''
    minutes = float(summary.get('seconds', 0.0)) / 60
    top = subprocess.run(
        ['git', '-C', dest, 'rev-parse', '--show-toplevel'], capture_output=True, text=True
    ).stdout.strip()
    message = (
        f'{os.path.relpath(dest, top) if top else dest}: run {job.name} finished '
        f'({minutes:.0f} min of training{acc})'
    )
    outcome += ', ' + commit_export(dest, message)
  _log(
      root,
      f'{datetime.datetime.now().isoformat(timespec="seconds")} {job.name}: {outcome} '
      f'to {dest}',
  )
  print(f'{job.name}: {outcome} to {dest}', flush=True)


def table(jobs: Sequence[Job]) -> str:
  width = max([len(j.name) for j in jobs] + [3])
  lines = [f'{"run":<{width}}  host  status', f'{"-" * width}  ----  ------']
  lines += [f'{j.name:<{width}}  {j.host:>4}  {j.status}' for j in jobs]
  return '\n'.join(lines)


def sweep(
    jobs: List[Job],
    root: str,
    host_index: int = 0,
    dry_run: bool = False,
    export: str = '',
    commit: bool = False,
) -> int:
  """Runs this host's unfinished jobs in order; returns the sweep's exit status.

  0: every run finished; 1: some run failed (the others still ran); 143: a run was stopped by a
  preemption notice or Ctrl-C (the sweep stops there; running it again resumes).
  """
  mine = [j for j in jobs if j.host == host_index]
  others = len(jobs) - len(mine)
  print(
      f'Sweep: {len(jobs)} runs, {len(mine)} on this host (index {host_index})'
      + (f', {others} on other hosts' if others else '')
      + f'; workdirs under {root}.'
  )
  failed, stopped = 0, False
  for job in mine:
    if job.status == 'finished':
      job.status = 'finished (skipped: summary.json present)'
      if not dry_run:
        publish(job, export, commit, root)
    elif stopped:
      job.status = 'not run (sweep stopped)'
    elif dry_run:
      print(f'\n{job.name} ({job.status}):\n  cd {shlex.quote(ROOT)} && {shlex.join(job.command)}')
      job.status = 'would resume' if job.status == 'resume' else 'would start'
    else:
      job.status = run(job, root)
      publish(job, export, commit, root)
      failed += job.status.startswith('failed')
      stopped = job.status.startswith('stopped')
  print('\n' + table(mine))
  if failed:
    print(f'{failed} run(s) failed.')
  return PREEMPTED_EXIT_CODE if stopped else 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise app.UsageError(f'--seeds={",".join(FLAGS.seeds)}: expected integers.') from None
  if FLAGS.commit and not FLAGS.export:
    raise app.UsageError('--commit commits what --export writes: give --export=DIR as well.')
  runs, scale = None, FLAGS.scale
  if FLAGS.design == 'confirm':
    from configs import study  # pylint: disable=g-import-not-at-top

    runs, scale = study.confirm_runs(), 'confirm'
  try:
    jobs = plan(
        FLAGS.models,
        FLAGS.datasets,
        seeds,
        scale,
        FLAGS.root,
        FLAGS.data_dir,
        FLAGS.override,
        FLAGS.host_index,
        FLAGS.num_hosts,
        FLAGS.python,
        FLAGS.replicas_per_run,
        FLAGS.controls,
        runs=runs,
    )
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  sys.exit(
      sweep(
          jobs,
          os.path.abspath(FLAGS.root),
          FLAGS.host_index,
          FLAGS.dry_run,
          export=FLAGS.export,
          commit=FLAGS.commit,
      )
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
