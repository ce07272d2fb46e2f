"""videogen: MAGVIT / MAGVIT-v2 / VideoPoet video generation in JAX and Flax NNX."""
