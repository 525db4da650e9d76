"""What a run prints: the console's quiet Orbax/JAX logging, times and replica spreads, and the
announced first call of each jitted program (where it compiles)."""

import logging as pylogging
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every save at INFO, JAX that it found no TPU; keep their warnings and errors
  (and, with --verbose, everything), drop the chatter."""

  def filter(self, record):
    verbose = logging.get_verbosity() >= logging.DEBUG
    orbax = '/orbax/' in record.pathname
    if orbax and record.exc_info and not verbose:
      # A failed background save: Orbax logs its traceback from each thread it passes through;
      # the run reports the error itself, once (CheckpointSaveError), its traceback in the log
      # file train.py names. Orbax's one-line message is kept.
      record.exc_info, record.exc_text = None, None
    return (
        record.levelno >= pylogging.WARNING
        or verbose
        or not (orbax or record.pathname.endswith('xla_bridge.py'))
    )


def quiet_orbax_logging():
  """Installs the filter on absl's handler (once)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
    handler.addFilter(_QuietOrbax())


quiet_orbax_logging()


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return (
      f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
      if seconds >= 3600
      else (f'{seconds // 60}m{seconds % 60:02d}s')
  )


def spread_text(values: Sequence[float], digits: int = 4) -> str:
  """'mean ± sample std' of the replicas' values (the value itself with one replica)."""
  v = np.asarray(values, np.float64)
  if len(v) == 1:
    return f'{v[0]:.{digits}f}'
  return f'{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}'


def announce_first_call(fn, what: str):
  """fn, whose first call (where jax.jit compiles) is announced and timed on the console."""
  called = False

  def call(*args):
    nonlocal called
    if called:
      return fn(*args)
    called = True
    logging.info('Compiling the %s ...', what)
    t = time.time()
    out = jax.block_until_ready(fn(*args))
    call.seconds = time.time() - t
    logging.info('Compiled the %s in %.1f s (its first call included).', what, call.seconds)
    return out

  call.seconds = 0.0  # of the first call, once made
  return call
