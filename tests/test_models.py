"""Model families: parameter counts, taps, learning, mixed precision, ViT checkpoints.

Full-size models are only traced (jax.eval_shape); real forward and training passes use the
tiny variants so that the file stays fast on a CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from models import densenet, mobilenetv2, resnet, vgg, vit, vit_checkpoint
from models.taps import display_name

# name -> (parameters at 10 classes, at 100 classes, input side). The counts are the
# specification (design document, section 4), not values read back from the code.
FULL = {
    'resnet18': (11_173_962, 11_220_132, 32),
    'resnet34': (21_282_122, 21_328_292, 32),
    'resnet50': (23_520_842, 23_705_252, 32),
    'vgg16': (14_724_042, 14_770_212, 32),
    'densenet121': (6_956_426, 7_048_676, 32),
    'mobilenetv2': (2_236_682, 2_351_972, 32),
    'vit_b16': (85_806_346, 85_875_556, 224),
}
TINY = ['resnet18_tiny', 'vgg16_tiny', 'densenet121_tiny', 'mobilenetv2_tiny', 'vit_tiny']


def abstract_variables(model, side, batch=1):
  x = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def abstract_forward(model, side, batch=2, train=False):
  """(variables, logits, taps) as ShapeDtypeStructs; no computation."""
  variables = abstract_variables(model, side)
  x = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)

  def forward(variables, x):
    out = models.apply_with_taps(
        model,
        variables,
        x,
        train=train,
        mutable=['batch_stats'] if train else False,
        rngs={'dropout': jax.random.key(1)},
    )
    return out[0] if train else out

  logits, taps = jax.eval_shape(forward, variables, x)
  return variables, logits, taps


def num_params(params):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def expected_tap_names(model):
  """Tap display names derived from the module's configuration, in forward order."""
  if isinstance(model, resnet.ResNet):
    return ['stem'] + [
        f'stage{s + 1}_block{b + 1}' for s, n in enumerate(model.stage_sizes) for b in range(n)
    ]
  if isinstance(model, vgg.VGG):
    names, block, layer = [], 1, 1
    for item in model.layout:
      if item == 'M':
        block, layer = block + 1, 1
      else:
        names.append(f'block{block}_conv{layer}')
        layer += 1
    return names
  if isinstance(model, densenet.DenseNet):
    names = ['stem']
    for b, n in enumerate(model.block_sizes):
      names += [f'block{b + 1}_layer{i + 1}' for i in range(n)]
      if b + 1 < len(model.block_sizes):
        names.append(f'transition{b + 1}')
    return names
  if isinstance(model, mobilenetv2.MobileNetV2):
    return ['stem'] + [
        f'stage{s + 1}_block{b + 1}'
        for s, (_, _, n, _) in enumerate(model.stages)
        for b in range(n)
    ]
  if isinstance(model, vit.VisionTransformer):
    return ['patch_embedding'] + [f'block{i + 1}' for i in range(model.num_layers)]
  raise AssertionError(f'no tap specification for {type(model).__name__}')


def check_taps(model, taps, batch):
  keys = list(taps)
  assert len(keys) >= 8
  assert keys == sorted(keys), 'tap keys must sort into forward (insertion) order'
  assert [k.split('_', 1)[0] for k in keys] == [f'{i:02d}' for i in range(len(keys))]
  assert [display_name(k) for k in keys] == expected_tap_names(model)
  for value in taps.values():
    assert value.shape[0] == batch


def test_registry_covers_every_model_with_a_count_or_a_tiny_variant():
  assert set(models.names()) == set(FULL) | set(TINY)


def test_unknown_model_is_a_value_error_naming_the_field():
  with pytest.raises(ValueError, match='`model`'):
    models.get('nope', 10)


@pytest.mark.parametrize('name', sorted(FULL))
def test_full_size_parameter_counts(name):
  count_10, count_100, side = FULL[name]
  for num_classes, expected in ((10, count_10), (100, count_100)):
    variables = abstract_variables(models.get(name, num_classes), side)
    assert num_params(variables['params']) == expected, (name, num_classes)


@pytest.mark.parametrize('name', sorted(FULL))
def test_full_size_taps_and_logits_shapes(name):
  model = models.get(name, 10)
  _, logits, taps = abstract_forward(model, FULL[name][2])
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  check_taps(model, taps, batch=2)


def test_full_size_tap_details():
  _, _, taps = abstract_forward(models.get('densenet121', 10), 32)
  new_features = [v for k, v in taps.items() if '_layer' in k]
  assert len(new_features) == 6 + 12 + 24 + 16
  assert all(v.shape[-1] == 32 for v in new_features)  # growth channels, before concat
  transitions = [v.shape for k, v in taps.items() if 'transition' in k]
  assert transitions == [(2, 16, 16, 128), (2, 8, 8, 256), (2, 4, 4, 512)]
  _, _, taps = abstract_forward(models.get('vit_b16', 10), 224)
  assert all(v.shape == (2, 1 + 14 * 14, 768) for v in taps.values())
  _, _, taps = abstract_forward(models.get('mobilenetv2', 10), 32)
  # CIFAR strides: 32x32 through the stem and the first two stages.
  assert [v.shape[1] for v in taps.values()][:4] == [32, 32, 32, 32]


# name -> the published parameter count of the ImageNet network (1000 classes, 224x224),
# torchvision's and the papers' (vgg16_bn for VGG-16): the specification, typed in.
IMAGENET = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'vgg16': 138_365_992,
    'densenet121': 7_978_856,
    'mobilenetv2': 3_504_872,
}


@pytest.mark.parametrize('name', sorted(IMAGENET))
def test_imagenet_parameter_counts_at_224_by_default_and_when_forced(name):
  # 'auto' picks the ImageNet stem and head from the input's side ...
  assert num_params(abstract_variables(models.get(name, 1000), 224)['params']) == IMAGENET[name]
  # ... and an explicit stem wins over the side, both ways.
  forced = models.get(name, 1000, stem='imagenet')
  assert num_params(abstract_variables(forced, 64)['params']) == IMAGENET[name]
  count_10, _, _ = FULL[name]
  cifar = models.get(name, 10, stem='cifar')
  assert num_params(abstract_variables(cifar, 224)['params']) == count_10


@pytest.mark.parametrize(
    'name, first, last',
    [
        # ResNet and DenseNet tap the stem before its max-pool (112 -> 56).
        ('resnet50', (112, 112, 64), (7, 7, 2048)),
        ('densenet121', (112, 112, 64), (7, 7, 32)),
        ('mobilenetv2', (112, 112, 32), (7, 7, 320)),
        ('vgg16', (224, 224, 64), (14, 14, 512)),
    ],
)
def test_imagenet_taps_follow_the_published_resolutions(name, first, last):
  model = models.get(name, 1000)
  _, logits, taps = abstract_forward(model, 224)
  assert logits.shape == (2, 1000)
  check_taps(model, taps, batch=2)  # the same tap names as the CIFAR network
  shapes = [v.shape[1:] for v in taps.values()]
  assert (shapes[0], shapes[-1]) == (first, last)
  if name in ('resnet50', 'densenet121'):  # the first block sees the pooled stem
    assert shapes[1][:2] == (56, 56)


def test_auto_stem_keeps_the_cifar_network_below_the_threshold():
  from models import layers  # pylint: disable=import-outside-toplevel

  side = layers.IMAGENET_MIN_SIDE
  below = abstract_variables(models.get('resnet18', 10), side - 1)
  at = abstract_variables(models.get('resnet18', 10), side)
  assert below['params']['Conv_0']['kernel'].shape[:2] == (3, 3)
  assert at['params']['Conv_0']['kernel'].shape[:2] == (7, 7)


def test_unknown_stem_is_a_value_error_naming_the_field():
  with pytest.raises(ValueError, match='`model_args.stem`'):
    abstract_variables(models.get('resnet18_tiny', 10, stem='imagnet'), 32)


@pytest.mark.parametrize('name', TINY)
def test_mixed_precision_keeps_params_and_logits_float32(name):
  model = models.get(name, 10, dtype=jnp.bfloat16)
  variables, logits, taps = abstract_forward(model, 32, train=True)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in taps.values()} == {jnp.dtype(jnp.bfloat16)}


def init_variables(model, x, seed=0):
  # The 'rbg' generator compiles several times faster than threefry on CPU; the models do
  # not depend on the generator.
  return jax.jit(lambda x: model.init(jax.random.key(seed, impl='rbg'), x, train=False))(x)


def synthetic_batch(num=32, side=32, num_classes=10):
  """Class-dependent mean images plus noise: learnable, seeded."""
  key_means, key_noise, key_labels = jax.random.split(jax.random.key(0), 3)
  means = jax.random.normal(key_means, (num_classes, side, side, 3))
  labels = jax.random.permutation(key_labels, jnp.arange(num) % num_classes)
  images = means[labels] + 0.5 * jax.random.normal(key_noise, (num, side, side, 3))
  return images, labels


@pytest.mark.parametrize('name', TINY)
def test_tiny_training_reduces_loss_then_eval_forward(name):
  model = models.get(name, 10)
  images, labels = synthetic_batch()
  variables = init_variables(model, images[:2])
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(params, batch_stats, key):
    variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
    (logits, taps), state = models.apply_with_taps(
        model, variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key}
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (state.get('batch_stats', {}), taps)

  @jax.jit
  def step(params, batch_stats, opt_state, key):
    (loss, (batch_stats, taps)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, key
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss, taps

  losses = []
  for i in range(21):  # the loss of step i is measured before its update: 20 updates
    params, batch_stats, opt_state, loss, train_taps = step(
        params, batch_stats, opt_state, jax.random.key(i)
    )
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  # Chance level is ln(10) = 2.30; demand that 20 updates remove at least half the loss.
  assert losses[-1] < 0.5 * losses[0], (name, losses)
  check_taps(model, train_taps, batch=32)

  # Inference mode with the running statistics that training accumulated.
  variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
  logits, taps = jax.jit(lambda v, x: models.apply_with_taps(model, v, x, train=False))(
      variables, images[:4]
  )
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  check_taps(model, taps, batch=4)
  assert list(taps) == list(train_taps)  # the same names in both modes
  # A plain apply (the eval step's) records no taps and returns the same logits alone.
  plain = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images[:4])
  np.testing.assert_allclose(plain, logits, rtol=1e-5, atol=1e-5)


# ----- ViT checkpoints ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def vit_model_and_init(num_classes, side):
  # Two blocks are enough for the checkpoint tests and halve their compile time.
  model = models.get('vit_tiny', num_classes, num_layers=2)
  x = jnp.zeros((1, side, side, 3))
  return model, jax.jit(lambda key: model.init(key, x, train=False)['params'])


def vit_params(num_classes=10, side=32, seed=0):
  model, init = vit_model_and_init(num_classes, side)
  return model, init(jax.random.key(seed, impl='rbg'))


def flat(params):
  return vit_checkpoint.flatten_params(params)


@pytest.fixture(scope='module')
def saved_vit(tmp_path_factory):
  _, params = vit_params(seed=0)
  # A trained-looking head and class token, so that "kept" and "loaded" differ from init.
  params['head']['kernel'] = jax.random.normal(jax.random.key(5), params['head']['kernel'].shape)
  params['cls'] = jax.random.normal(jax.random.key(6), params['cls'].shape)
  path = str(tmp_path_factory.mktemp('vit') / 'vit_tiny.npz')
  vit_checkpoint.save_npz(params, path)
  return params, path


def test_save_npz_uses_the_original_flat_key_layout(saved_vit):
  _, path = saved_vit
  with np.load(path) as npz:
    keys = set(npz.files)
  for key in [
      'embedding/kernel',
      'cls',
      'head/kernel',
      'Transformer/encoder_norm/scale',
      'Transformer/posembed_input/pos_embedding',
      'Transformer/encoderblock_0/LayerNorm_0/scale',
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel',
      'Transformer/encoderblock_0/LayerNorm_2/bias',
      'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel',
      'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias',
  ]:
    assert key in keys, key


def test_vit_b16_attention_shapes_match_the_release():
  params = abstract_variables(models.get('vit_b16', 10), 224)['params']
  attention = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
  assert attention['query']['kernel'].shape == (768, 12, 64)
  assert attention['out']['kernel'].shape == (12, 64, 768)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 197, 768)


def test_load_pretrained_same_config_gives_identical_logits(saved_vit):
  saved, path = saved_vit
  model, fresh = vit_params(seed=1)
  loaded = vit_checkpoint.load_pretrained(fresh, path)
  for key, value in flat(saved).items():
    np.testing.assert_array_equal(flat(loaded)[key], value, err_msg=key)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  np.testing.assert_array_equal(
      model.apply({'params': loaded}, x, train=False),
      model.apply({'params': saved}, x, train=False),
  )


def test_load_pretrained_keeps_the_given_head_for_another_class_count(saved_vit):
  saved, path = saved_vit
  _, fresh = vit_params(num_classes=100, seed=1)
  fresh['head']['kernel'] = jax.random.normal(jax.random.key(7), fresh['head']['kernel'].shape)
  loaded = vit_checkpoint.load_pretrained(fresh, path)
  for key, value in flat(loaded).items():
    reference = flat(fresh)[key] if key.startswith('head/') else flat(saved)[key]
    np.testing.assert_array_equal(value, reference, err_msg=key)


def bilinear_align_corners(grid, new_side):
  """Independent reference: separable linear interpolation with the corners aligned."""

  def along(a, axis):
    side = a.shape[axis]
    src = np.linspace(0.0, side - 1, new_side)
    lo = np.clip(np.floor(src).astype(int), 0, side - 2)
    w = np.expand_dims(src - lo, tuple(d for d in range(a.ndim) if d != axis))
    return np.take(a, lo, axis) * (1 - w) + np.take(a, lo + 1, axis) * w

  return along(along(grid, 0), 1)


def test_load_pretrained_resamples_position_embeddings_for_another_input_size(saved_vit):
  saved, path = saved_vit
  model, fresh = vit_params(side=48, seed=1)  # 12x12 patches instead of 8x8
  loaded = vit_checkpoint.load_pretrained(fresh, path)
  key = vit_checkpoint.POSEMB_KEY
  old, new = np.asarray(flat(saved)[key]), np.asarray(flat(loaded)[key])
  assert new.shape == (1, 1 + 12 * 12, 32)
  np.testing.assert_array_equal(new[:, 0], old[:, 0])  # class token unchanged
  expected = bilinear_align_corners(old[0, 1:].reshape(8, 8, 32).astype(np.float64), 12)
  np.testing.assert_allclose(new[0, 1:].reshape(12, 12, 32), expected, rtol=1e-5, atol=1e-6)
  for k, value in flat(loaded).items():
    if k != key:
      np.testing.assert_array_equal(value, flat(saved)[k], err_msg=k)
  logits = model.apply({'params': loaded}, jnp.ones((1, 48, 48, 3)), train=False)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_resample_posemb_is_the_identity_at_the_same_size():
  posemb = np.random.default_rng(0).normal(size=(1, 65, 32)).astype(np.float32)
  np.testing.assert_array_equal(vit_checkpoint.resample_posemb(posemb, 65), posemb)


def test_load_pretrained_names_missing_keys_and_bad_shapes(saved_vit, tmp_path):
  saved, _ = saved_vit
  _, fresh = vit_params(seed=1)
  entries = {k: np.asarray(v) for k, v in flat(saved).items()}
  missing = 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'
  np.savez(tmp_path / 'missing.npz', **{k: v for k, v in entries.items() if k != missing})
  with pytest.raises(ValueError, match=missing):
    vit_checkpoint.load_pretrained(fresh, str(tmp_path / 'missing.npz'))
  bad = 'Transformer/encoderblock_1/LayerNorm_2/scale'
  np.savez(tmp_path / 'bad.npz', **{**entries, bad: np.ones(7, np.float32)})
  with pytest.raises(ValueError, match=bad):
    vit_checkpoint.load_pretrained(fresh, str(tmp_path / 'bad.npz'))
