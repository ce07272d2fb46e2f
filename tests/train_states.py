"""Comparing train states in tests (a support module, not a test module)."""

import jax
import numpy as np
from flax import nnx


def leaves(state) -> list[np.ndarray]:
    """Host arrays of every state leaf; PRNG keys as their raw key data."""
    out = []
    for x in jax.tree.leaves(nnx.to_pure_dict(state)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(jax.device_get(x)))
    return out
