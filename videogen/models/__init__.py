"""Models: tokenizers, quantizers, discriminators, transformers and their layers."""

from flax import nnx as _nnx

# Parameters carry logical axis names as metadata only. videogen.sharding maps
# them to mesh axes with the config's rules and jit applies the shardings;
# eager sharding at variable creation would need a mesh for every model built
# (tests, notebooks, evaluation), so it is off wherever these models are used.
_nnx.use_eager_sharding(False)
