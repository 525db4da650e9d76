"""Training-dynamics metrics: pure JAX functions, time on the last axis (DESIGN.md section 3).

The library needs only jax and numpy; importing it imports no Flax, ml_collections, TensorFlow
or any of the project's models, data or training code. Three layers:

* metric functions on signals ``x: f[..., L, N]`` (L taps, N samples): ``dfa_exponent``,
  ``integration``, ``kuramoto_order``, ``synchrony``, ``metastability``, ``stability_index``,
  ``rolling_volatility``, ``convergence_signal``, ``accuracy_plateau``, ``compute_metrics``;
* taps from Flax models: ``taps_from_intermediates`` (Linen ``sow`` / ``capture_intermediates``
  collections, NNX ``nnx.capture`` states), ``apply_with_taps`` (Linen), ``nnx_apply_with_taps``;
* the in-step tracker: ``make_tracker(dcfg, tap_shapes, num_steps, num_epochs)`` -> ``Tracker``
  with ``init``, ``record_step``, ``reduce``, ``probe_update``, ``summarize_step``,
  ``summarize_probe``, ``export``, ``drain`` (the step series leave the device in chunks:
  ``StepSeries`` collects them); ``default_config()`` lists every definition choice; the
  step outputs averaged for clu.metrics / nnx.Metric loops: ``StepAverage``,
  ``clu_average``, ``nnx_average`` (NaN before the first window left out);
* metrics users add: ``register_metric(name, fn, needs=, null=)`` (dynamics/registry.py): a
  registered metric is computed by every tracker built after it, with its null, and written
  wherever the built-ins are;
* offline: ``recompute(recorded, definition)``, the metrics of a recorded run (its
  ``export()`` or dynamics.npz) under another definition, for ablations in any loop.

docs/library.md is the guide for using it in your own training loop.
"""

from dynamics.api import RunFitWarning, make_tracker
from dynamics.config import Config, as_config, default_config
from dynamics.dfa import default_scales, dfa_exponent, fluctuation, integration, validate_scales
from dynamics.interop import StepAverage, clu_average, nnx_average
from dynamics.nulls import surrogate_test, surrogates
from dynamics.offline import recompute
from dynamics.phase import hilbert, kuramoto_order, metastability, preprocess, synchrony
from dynamics.registry import Metric, register_metric, registered, unregister_metric
from dynamics.series import StepSeries
from dynamics.signals import reduce_taps, signal_names
from dynamics.stability import (
    accuracy_plateau,
    convergence_signal,
    rolling_volatility,
    stability_index,
)
from dynamics.taps import (
    apply_with_taps,
    display_name,
    nnx_apply_with_taps,
    taps_from_intermediates,
)
from dynamics.tracker import (
    METRICS,
    MetricSpec,
    Tracker,
    check_taps,
    compute_metrics,
    resolve_scales,
)

__all__ = [
    'METRICS',
    'Config',
    'Metric',
    'MetricSpec',
    'RunFitWarning',
    'StepAverage',
    'StepSeries',
    'Tracker',
    'accuracy_plateau',
    'apply_with_taps',
    'as_config',
    'check_taps',
    'clu_average',
    'compute_metrics',
    'convergence_signal',
    'default_config',
    'default_scales',
    'dfa_exponent',
    'display_name',
    'fluctuation',
    'hilbert',
    'integration',
    'kuramoto_order',
    'make_tracker',
    'metastability',
    'nnx_apply_with_taps',
    'nnx_average',
    'preprocess',
    'reduce_taps',
    'register_metric',
    'registered',
    'resolve_scales',
    'recompute',
    'rolling_volatility',
    'signal_names',
    'stability_index',
    'surrogate_test',
    'surrogates',
    'synchrony',
    'taps_from_intermediates',
    'unregister_metric',
    'validate_scales',
]
