"""The run plan: the config validated, fitted to the run's length and resolved once, against
the data's facts and the devices, before anything is loaded into a device or compiled.

Every later stage of a run reads the plan; nothing after `make_plan` validates or refits.
"""

import math
from typing import Any, NamedTuple, Optional, Tuple

from absl import logging

import data as data_lib
from data import facts as facts_lib
from training import fit as fit_lib, replicas as replicas_lib, validate


class Plan(NamedTuple):
  """One run, resolved. `config` must not be changed after `make_plan` returns it."""

  given: Any  # the config as given (auto fields as 0): what config.json keeps
  config: Any  # the config the run uses: every field valid, every `auto` field resolved
  data: facts_lib.DataFacts
  steps_per_epoch: int
  total_steps: int
  num_epochs: int  # epochs begun by total_steps (the last may be partial)
  image_shape: Tuple[int, int, int]  # (H, W, 3) as the model sees it (after image_size)
  data_devices: int  # devices along the mesh's 'data' axis
  dfa_epochs: Optional[int]  # epochs before the probe's integration is defined; None: no probe
  notes: Tuple[str, ...]  # the choices fit_to_run made (logged at INFO)
  warnings: Tuple[str, ...]  # what the run will not compute (logged as warnings)

  @property
  def replicas(self) -> int:
    return int(self.config.replicas)

  def log(self):
    for note in self.notes:
      logging.info('%s', note)
    for warning in self.warnings:
      logging.warning('%s', warning)


def known_facts(config) -> Optional[facts_lib.DataFacts]:
  """The data's facts from the config alone (so a bad config costs no loading); None where
  only loading tells them (image folders)."""
  return facts_lib.from_config(config.data)


def make_plan(config, data: facts_lib.DataFacts, num_devices: int, num_processes: int) -> Plan:
  """Validates `config` for this data and these devices and resolves it; raises ValueError
  naming the field (and what to do) for anything the run cannot honour."""
  replicas_lib.validate(config, num_devices)
  data_devices = (
      num_devices
      if config.replicas == 1
      else replicas_lib.mesh_shape(config.replicas, config.replica_devices, num_devices)[1]
  )
  validate.validate_config(config, data_devices, num_processes)
  validate.validate_data(config, data)
  data_lib.steps_per_epoch(data.train_size, config.batch_size)  # raises if no batch fits
  total_steps, steps_per_epoch = fit_lib.run_length(config, data.train_size)
  fit = fit_lib.fit_to_run(config, total_steps, steps_per_epoch)
  resolved = fit.config
  out_size = resolved.image_size or None
  dynamics_on = resolved.dynamics.enabled
  return Plan(
      given=config,
      config=resolved,
      data=data,
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
      num_epochs=math.ceil(total_steps / steps_per_epoch),
      image_shape=(out_size, out_size, 3) if out_size else tuple(data.image_shape),
      data_devices=data_devices,
      dfa_epochs=fit_lib.min_dfa_length(resolved.dynamics) if dynamics_on else None,
      notes=tuple(fit.notes),
      warnings=tuple(fit.warnings),
  )
