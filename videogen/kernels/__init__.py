"""Native kernels that XLA calls on CPU where its own are slow (built by `setup.sh`)."""
