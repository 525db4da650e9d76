"""Every model family runs in the training loop with the dynamics tracker, no model-specific
code involved; ViT trains from pretrained weights with images resized inside the step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs import tiny
from models import vit_checkpoint
from training import loop, programs

FAMILIES = ['resnet18_tiny', 'vgg16_tiny', 'densenet121_tiny', 'mobilenetv2_tiny', 'vit_tiny']


@pytest.mark.parametrize('name', FAMILIES)
def test_family_trains_with_the_tracker_in_the_compiled_step(name):
  config = tiny.get_config()
  config.model = name
  config.dynamics.window = 6
  config.dynamics.dfa_scales = '3,4,5,6'
  config.dynamics.volatility_window_steps = 2
  steps = 8
  exp = programs.build(
      config,
      4,
      (32, 32, 3),
      jnp.full(3, 120.0),
      jnp.full(3, 60.0),
      steps_per_epoch=steps,
      total_steps=steps,
      mesh=programs.make_mesh(),
  )
  state = exp.init_state(0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 255, (16, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 4, (16,)), jnp.int32)
  for _ in range(steps):
    state, metrics = exp.train_step(state, images, labels)
  assert exp.train_step._cache_size() == 1
  assert np.isfinite(float(metrics['train/loss']))
  num_taps = len(exp.tracker.tap_names)
  assert num_taps >= 8
  # The window filled at step 6: the last steps carry every metric.
  for key in ('integration', 'metastability', 'synchrony', 'dsi', 'dsi_volatility'):
    assert np.isfinite(float(metrics[f'dynamics/{key}'])), key
  signals = exp.probe(state, images)
  assert signals.shape == (num_taps,) and np.isfinite(np.asarray(signals)).all()


def test_vit_fine_tunes_from_pretrained_weights_at_a_larger_input(tmp_path):
  """Pretrained at 32x32 with 10 classes, fine-tuned at 48x48 with 4: position embeddings
  are resampled, the head re-initialised, and the synthetic images resized in the step."""
  source = models.get('vit_tiny', 10)
  variables = source.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
  path = str(tmp_path / 'pretrained.npz')
  vit_checkpoint.save_npz(variables['params'], path)

  config = tiny.get_config()
  config.model = 'vit_tiny'
  config.image_size = 48
  config.init_checkpoint = path
  config.num_train_steps = 1
  config.learning_rate = 1e-9  # one step that barely moves the weights
  config.warmup_epochs = 0.0
  config.schedule = 'constant'
  config.dynamics.enabled = False
  result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  params = result['state'].params
  src = variables['params']
  np.testing.assert_allclose(params['embedding']['kernel'], src['embedding']['kernel'], atol=1e-6)
  pos = params['Transformer']['posembed_input']['pos_embedding']
  assert pos.shape[1] == 1 + (48 // 4) ** 2
  np.testing.assert_allclose(
      pos[:, 0], src['Transformer']['posembed_input']['pos_embedding'][:, 0], atol=1e-6
  )
  assert params['head']['kernel'].shape[-1] == 4


def test_bfloat16_compute_trains():
  config = tiny.get_config()
  config.dtype = 'bfloat16'
  config.dynamics.enabled = False
  exp = programs.build(
      config,
      4,
      (32, 32, 3),
      jnp.full(3, 120.0),
      jnp.full(3, 60.0),
      steps_per_epoch=4,
      total_steps=4,
      mesh=programs.make_mesh(),
  )
  state = exp.init_state(0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 255, (16, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 4, (16,)), jnp.int32)
  state, metrics = exp.train_step(state, images, labels)
  assert np.isfinite(float(metrics['train/loss']))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
