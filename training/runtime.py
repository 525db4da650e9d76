"""XLA:CPU settings that make the train step faster, applied before JAX starts its backend.

XLA reads the XLA_FLAGS environment variable once, when the first computation creates the
backend, so `configure_xla_cpu()` must run before that (it raises if it would come too late).
train.py calls it in main() with the configured model, before anything touches a device, and
so do the benchmarks that time a model; analyze.py, bench_metrics.py and tests/conftest.py
call it with the defaults before importing JAX. It only adds
flags: anything already in XLA_FLAGS is kept and wins, and DYNAMICS_XLA_CPU_TUNING=0 turns the
additions off (to measure without them). The flags only concern the CPU backend; GPUs and TPUs
ignore them.

Why each flag is here, measured by benchmarks/bench_xla_flags.py (README, "Performance"):
YNNPACK (XNNPACK's successor inside XLA) takes over dot, elementwise and reduction fusions,
including the dots that XLA makes of convolution gradients. On a 2-core AMD EPYC this cuts
the ResNet-18 train step at batch 128 from 4.2 s to 2.3 s and the weight gradient of a
64-channel 3x3 convolution at 32x32 from 290 ms to 66 ms; the losses agree to float32
round-off (tests/test_runtime.py). Its elementwise fusions help the ResNets (ResNet-50: 14.6
img/s with them, 11.2 without) but hurt VGG-16 (107.7 against 132.5), DenseNet-121 (10.5
against 13.9) and MobileNetV2 (29.5 against 54.3): around them XLA materialises BatchNorm's
per-channel broadcasts at full activation size. Those three families leave them out
(bench_xla_flags.py --variants=ynn_all,ynn_dot_reduce).
"""

import importlib.metadata
import os
import sys
from typing import Dict, List, Optional

YNN_FUSION = 'xla_cpu_experimental_ynn_fusion_type'
# Flag -> value. The flag is experimental and jaxlib aborts the process on a flag it does not
# know, so it is only added for the jaxlib versions it was measured on.
CPU_FLAGS: Dict[str, str] = {YNN_FUSION: 'dot,eltwise,reduce'}
# Registry-name prefix -> the flags that differ from CPU_FLAGS for that model family.
MODEL_CPU_FLAGS: Dict[str, Dict[str, str]] = {
    prefix: {YNN_FUSION: 'dot,reduce'} for prefix in ('vgg', 'densenet', 'mobilenetv2')
}
MIN_JAXLIB = (0, 10)
OPT_OUT = 'DYNAMICS_XLA_CPU_TUNING'


def cpu_flags(model: Optional[str] = None) -> Dict[str, str]:
  """The flags for a registry model name (None: the defaults)."""
  flags = dict(CPU_FLAGS)
  for prefix, overrides in MODEL_CPU_FLAGS.items():
    if model and model.startswith(prefix):
      flags.update(overrides)
  return flags


def _jaxlib_version():
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return None
  return tuple(int(p) for p in version.split('.')[:2] if p.isdigit())


def _backend_started() -> bool:
  bridge = sys.modules.get('jax._src.xla_bridge')
  return bridge is not None and bridge.backends_are_initialized()


def configure_xla_cpu(environ=os.environ, model: Optional[str] = None) -> List[str]:
  """Appends cpu_flags(model) to environ['XLA_FLAGS'] (unless set there, or opted out); returns
  the flags it added. Call before the first JAX computation of the process."""
  if environ.get(OPT_OUT, '1') == '0':
    return []
  version = _jaxlib_version()
  if version is None or version < MIN_JAXLIB:
    return []
  existing = environ.get('XLA_FLAGS', '')
  added = [
      f'--{name}={value}'
      for name, value in cpu_flags(model).items()
      if f'--{name}=' not in existing
  ]
  if added and environ is os.environ and _backend_started():
    raise RuntimeError(
        f'training.runtime.configure_xla_cpu({model!r}) ran after JAX started its '
        f'backend, so {" ".join(added)} would have no effect: call it before the '
        'first JAX computation.'
    )
  if added:
    environ['XLA_FLAGS'] = ' '.join([existing] + added).strip()
  return added
