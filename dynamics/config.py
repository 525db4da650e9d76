"""The dynamics config: every definition choice of DESIGN section 3 is a field here."""

import ml_collections


def default_config():
  c = ml_collections.ConfigDict()
  c.enabled = True
  # Tap activation a: f[B, ..., C] -> signal. 'mean' (one number per tap), 'rms', or
  # 'proj:K' (batch/spatial mean, then K fixed random unit projections of the channels).
  c.reduction = 'mean'
  c.projection_seed = 0

  # Step mode: the training forward pass of every step, metrics over the last `window` steps.
  c.step_mode = True
  # 0 = auto: sized to the run by training.validate.fit_to_run, which logs its choice; 256 and
  # 50 on runs long enough for them (>= 512 steps, >= 100 computed windows), else half the run.
  c.window = 0
  c.every_steps = 1  # compute the window metrics every n steps (the series is recorded every step)
  c.volatility_window_steps = 0

  # Probe (epoch) mode: a fixed probe batch in inference mode at the end of every epoch,
  # metrics over the whole history so far (expanding) and over the last `sliding_epochs`.
  c.probe_mode = True
  c.probe_size = 256
  c.probe_split = 'test'  # test | train
  c.sliding_epochs = 24
  c.volatility_window_epochs = 5

  # Integration (DFA, DESIGN 3.2).
  c.dfa_order = 1
  c.dfa_scales = ''  # '' = log-spaced grid below; or explicit, e.g. '4,8,16,32'
  c.dfa_min_scale = 4
  c.dfa_max_divisor = 4  # largest scale = N // dfa_max_divisor
  c.dfa_num_scales = 12  # points of the log grid before de-duplication
  c.integration_method = 'per_layer_mean'  # per_layer_mean | mean_field

  # Metastability (Kuramoto, DESIGN 3.3).
  c.phase_preprocess = 'detrend'  # detrend | demean | diff
  c.phase_edge = 0  # samples dropped at each end of R(t)

  # Stability index and convergence (DESIGN 3.4).
  c.dsi_form = 'product'  # product | linear
  c.dsi_w_integration = 1.0
  c.dsi_w_metastability = 1.0
  c.convergence_rho = 0.25
  c.convergence_patience = 3
  c.convergence_warmup_epochs = 3
  c.convergence_warmup_steps = 0
  c.plateau_delta = 1.0
  return c
