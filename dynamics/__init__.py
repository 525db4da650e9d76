"""Training-dynamics metrics: pure JAX functions, time on the last axis (DESIGN.md section 3)."""

from dynamics.dfa import default_scales, dfa_exponent, fluctuation, integration, validate_scales
from dynamics.phase import hilbert, kuramoto_order, metastability, preprocess, synchrony
from dynamics.stability import (
  accuracy_plateau,
  convergence_signal,
  rolling_volatility,
  stability_index,
)
from dynamics.nulls import surrogate_test, surrogates
