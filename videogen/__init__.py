"""videogen: MAGVIT / MAGVIT-v2 / VideoPoet video generation in JAX and Flax NNX."""

from flax import nnx as _nnx

# Parameters carry logical axis names as metadata only. videogen.sharding maps
# them to mesh axes with the config's rules and jit applies the shardings;
# eager sharding at variable creation would need a mesh for every model built
# (tests, notebooks, evaluation), so it is off for the whole package.
_nnx.use_eager_sharding(False)
