"""Native kernels that XLA calls on CPU where its own are slow (built by `setup.sh`):
oneDNN's convolution (`onednn_conv`) and per-frame group normalisation (`group_norm`)."""
