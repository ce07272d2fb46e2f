"""Mixed precision: the computation dtype a run's `precision` config key names.

``"float32"`` computes everything in float32. ``"bfloat16"`` runs the trained models'
matmuls and convolutions, and the activations between them, in bfloat16, while the
parameters, their gradients, the optimizer state and the EMA stay float32 (each layer casts
its float32 parameters at use, so the optimizer updates float32 masters). Halving the
activations is what lets a larger batch or model fit an accelerator's memory; the matmuls
run at the chips' bfloat16 peak.

Kept in float32 whatever the switch, because bfloat16's 8 significant bits would bias them:
normalisation statistics (GroupNorm, LayerNorm), attention logits and softmax, output
logits and every cross-entropy, the quantizers (LFQ's signs, entropy and commitment
terms; VQ and RVQ distances and codebooks), every loss including the GAN's R1 and LeCAM
terms, and the frozen evaluation networks (LPIPS, I3D, InceptionV3), which are built apart
from the switch and cast their inputs to float32. The models return float32
reconstructions, latents and logits (the audio discriminator's feature maps stay bf16;
the feature-matching loss casts them).

The switch acts on the models a run trains (and so on that run's own evaluation of them).
Frozen models a run loads, a tokenizer or audio codec feeding stage 2 or VideoPoet, an
export in `videogen encode`, compute in float32: their tokens do not change with the
switch of whichever run reads them.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The models' computation dtype for `config.precision` ("float32" or "bfloat16")."""
    # A run saved before the key existed (its config restored to build a generator) was float32.
    value = config.get("precision", "float32")
    if value not in PRECISIONS:
        raise ValueError(
            f"config.precision={value!r} is not supported; use one of {tuple(PRECISIONS)} "
            "(--config.precision=bfloat16 for bf16 computation with float32 parameters)."
        )
    return PRECISIONS[value]
