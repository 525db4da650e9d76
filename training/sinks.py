"""Where a run's records go: one Sink (the writers of metrics.jsonl and TensorBoard) per
replica, opened for a fresh start or a resume."""

import os
import time
from typing import Any, List, NamedTuple, Optional

import jax

from training import replicas as replicas_lib, workdir as workdir_lib, writers as writers_lib


class Sink(NamedTuple):
  """Where one replica's records go: the workdir itself with one replica, replica_<k>/ else."""

  workdir: str
  writer: Any
  jsonl: Optional[writers_lib.JsonlWriter]


def open_sinks(config, workdir: str, start_step: int) -> List[Sink]:
  n = config.replicas
  sinks = []
  stamp = time.strftime('%Y%m%d-%H%M%S')
  if start_step == 0 and n > 1 and jax.process_index() == 0:
    workdir_lib.set_aside_previous_records(workdir, stamp)  # the whole run's summary.json
  for k in range(n):
    folder = workdir if n == 1 else replicas_lib.replica_dir(workdir, k)
    if n == 1:
      writer, jsonl = writers_lib.create_writers(folder)
    else:  # the loop logs one line for all replicas, not one per replica
      writer, jsonl = writers_lib.create_replica_writers(folder)
    if jsonl is not None:
      if start_step == 0:
        # No checkpoint: records of an earlier run here cannot be redone from one. They are
        # moved aside, never truncated (nothing when the folder holds no records).
        workdir_lib.set_aside_previous_records(folder, stamp)
      # Records past the restored step come from steps that are about to be redone.
      workdir_lib.repair_metrics(os.path.join(folder, 'metrics.jsonl'))
      jsonl.truncate_after(start_step)
    if start_step == 0:
      hparams = {k: v for k, v in config.items() if not hasattr(v, 'items')}
      if n > 1:
        hparams.update(seed=config.seed + k, replica=k)
      writer.write_hparams(hparams)
    sinks.append(Sink(folder, writer, jsonl))
  return sinks


def split(tree, n: int) -> List[Any]:
  """[tree] with one replica; [replica 0, ..., replica n-1] of a stacked tree otherwise."""
  return [tree] if n == 1 else [replicas_lib.take(tree, k) for k in range(n)]
