"""Vision Transformer (ViT-B/16 and a tiny variant), laid out like the original release.

Module and parameter names are those of google-research/vision_transformer (models_vit.py), so
its public ``.npz`` checkpoints map onto these parameters key for key; models/vit_checkpoint.py
loads them (``load_pretrained``) and writes that layout (``save_npz``):

    embedding/{kernel,bias}                   patch embedding, a stride-`patch` conv
    cls                                       class token, f[1, 1, width]
    Transformer/posembed_input/pos_embedding  f[1, 1 + tokens, width], sized from the input
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
        LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1}
    Transformer/encoder_norm
    head/{kernel,bias}                        linear head on the class token

Pre-norm blocks, GELU MLP, final LayerNorm, dropout rates 0 by default (a non-zero rate needs
``rngs={'dropout': key}`` when ``train=True``). With ``dtype=jnp.bfloat16`` the matmuls run in
bfloat16 while LayerNorm statistics and the attention softmax stay in float32.

Taps: the patch embedding (after the class token and position embeddings are added) and every
encoder block output, in forward order: ViT-B/16 has 1 + 12 = 13.
Parameter counts at 224x224: 85,806,346 (10 classes), 85,875,556 (100 classes).
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp


class AddPositionEmbs(nn.Module):
  """Adds learned position embeddings, one per token of the input seen at init."""

  @nn.compact
  def __call__(self, x):
    pos_embedding = self.param(
        'pos_embedding', nn.initializers.normal(stddev=0.02), (1, x.shape[1], x.shape[2])
    )
    return x + pos_embedding.astype(x.dtype)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, back to the input width."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dense = functools.partial(
        nn.Dense,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
    )
    width = x.shape[-1]
    y = nn.gelu(dense(self.mlp_dim, name='Dense_0')(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = dense(width, name='Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    # Explicit names: Linen numbers each class separately, the release numbered them jointly.
    x = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        force_fp32_for_softmax=True,
        kernel_init=nn.initializers.xavier_uniform(),
        broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        deterministic=deterministic,
        name='MultiHeadDotProductAttention_1',
    )(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = x + inputs
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, dtype=self.dtype, name='MlpBlock_3')(
        y, deterministic=deterministic
    )
    return x + y


class Encoder(nn.Module):
  """Position embeddings, ``num_layers`` blocks and the final LayerNorm ('Transformer')."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[Callable[[str, Any], Any]] = None):
    # `tap(name, x)` sows a tap; VisionTransformer passes its own sow, so that the taps sit at
    # the top of its 'intermediates' ('patch_embedding', 'block1', ...) like every family's.
    tap = tap or functools.partial(self.sow, 'intermediates')
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    tap('patch_embedding', x)
    for layer in range(self.num_layers):
      x = Encoder1DBlock(
          self.mlp_dim,
          self.num_heads,
          self.dropout_rate,
          self.attention_dropout_rate,
          dtype=self.dtype,
          name=f'encoderblock_{layer}',
      )(x, deterministic=not train)
      tap(f'block{layer + 1}', x)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT with a class token. ``__call__(x: f[B, H, W, 3], train) -> logits``.

  H and W must be multiples of ``patch_size``; the position embeddings take the token count
  of the input used at init (models/vit_checkpoint.py resamples them for another size).
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    patch = (self.patch_size, self.patch_size)
    x = nn.Conv(
        self.hidden_size, patch, strides=patch, padding='VALID', dtype=self.dtype, name='embedding'
    )(x)
    batch, height, width, channels = x.shape
    x = jnp.reshape(x, (batch, height * width, channels))
    cls = self.param('cls', nn.initializers.zeros, (1, 1, channels))
    x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)
    x = Encoder(
        self.num_layers,
        self.mlp_dim,
        self.num_heads,
        self.dropout_rate,
        self.attention_dropout_rate,
        dtype=self.dtype,
        name='Transformer',
    )(x, train=train, tap=functools.partial(self.sow, 'intermediates'))
    # The release initialises the head to zero (it is what fine-tuning replaces).
    logits = nn.Dense(
        self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='head'
    )(x[:, 0])
    return logits.astype(jnp.float32)


ViTB16 = functools.partial(
    VisionTransformer, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072
)

# Registry entries: name -> constructor(num_classes, **variant). The tiny variant (patch 4 on
# 32x32: 64 tokens + class token, width 32, depth 8) has 9 taps.
VARIANTS = {
    'vit_b16': ViTB16,
    'vit_tiny': functools.partial(
        VisionTransformer, patch_size=4, hidden_size=32, num_layers=8, num_heads=2, mlp_dim=64
    ),
}
