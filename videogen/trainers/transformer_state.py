"""The train state of the token transformers (MAGVIT's masked transformer, VideoPoet's
prefix LM): one class, so both checkpoint the same way."""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

from videogen import optim


class TransformerTrainState(nnx.Module):
    """What a transformer run checkpoints: the model (with its dropout RNG), its optimizer,
    and the RNG stream of the step's own sampling, named by the trainer (`stream`:
    "masking" for MAGVIT's tasks and masks, "condition_drop" for VideoPoet's caption
    dropout). The stream's name is part of the checkpoint's tree, so it stays per trainer."""

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, seed: int, stream: str):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        # seed + 2: seed and seed + 1 are the model's parameter and dropout keys.
        self.rngs = nnx.Rngs(**{stream: jax.random.key(seed + 2)})


def create_transformer_state(
    config: ml_collections.ConfigDict, model: nnx.Module, stream: str
) -> TransformerTrainState:
    """`model` with the optimizer of `config.optimizer` over `config.num_train_steps`."""
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    return TransformerTrainState(model, tx, config.seed, stream)
