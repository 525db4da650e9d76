"""XLA:CPU settings that make the train step faster, applied before JAX starts its backend.

XLA reads the XLA_FLAGS environment variable once, when the first computation creates the
backend, so `configure_xla_cpu()` must run before that; train.py, analyze.py, the benchmarks
and tests/conftest.py call it before importing JAX. It only adds flags: anything already in
XLA_FLAGS is kept and wins, and DYNAMICS_XLA_CPU_TUNING=0 turns the additions off (to
measure without them). The flags only concern the CPU backend; GPUs and TPUs ignore them.

Why each flag is here, measured by benchmarks/bench_xla_flags.py (README, "Performance"):
YNNPACK (XNNPACK's successor inside XLA) takes over dot, elementwise and reduction fusions,
including the dots that XLA makes of convolution gradients. On a 2-core AMD EPYC this cuts
the ResNet-18 train step at batch 128 from 4.2 s to 2.3 s and the weight gradient of a
64-channel 3x3 convolution at 32x32 from 290 ms to 66 ms; the losses agree to float32
round-off (tests/test_runtime.py).
"""

import importlib.metadata
import os
from typing import Dict, List

# Flag -> value. The flag is experimental and jaxlib aborts the process on a flag it does not
# know, so it is only added for the jaxlib versions it was measured on.
CPU_FLAGS: Dict[str, str] = {
    'xla_cpu_experimental_ynn_fusion_type': 'dot,eltwise,reduce',
}
MIN_JAXLIB = (0, 10)
OPT_OUT = 'DYNAMICS_XLA_CPU_TUNING'


def _jaxlib_version():
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return None
  return tuple(int(p) for p in version.split('.')[:2] if p.isdigit())


def configure_xla_cpu(environ=os.environ) -> List[str]:
  """Appends CPU_FLAGS to environ['XLA_FLAGS'] (unless set there, or opted out); returns the
  flags it added. Call before the first JAX computation of the process."""
  if environ.get(OPT_OUT, '1') == '0':
    return []
  version = _jaxlib_version()
  if version is None or version < MIN_JAXLIB:
    return []
  existing = environ.get('XLA_FLAGS', '')
  added = [f'--{name}={value}' for name, value in CPU_FLAGS.items()
           if f'--{name}=' not in existing]
  if added:
    environ['XLA_FLAGS'] = ' '.join([existing] + added).strip()
  return added
