"""Model FLOPs utilisation: a compiled program's FLOPs against the device's peak.

MFU = (FLOPs of one train step on one device) x (steps/s) / (peak FLOP/s of one device).
The FLOPs are what XLA's cost analysis counts in the compiled program. A program compiled
for a mesh is the per-device (SPMD-partitioned) program, so its count is already per device:
a batch split over 8 devices counts 1/8 of the batch's FLOPs, while work every device
repeats (replicated parameters' optimizer update, metrics) counts on each.

Peaks: a table of dense matmul peaks per chip for TPUs and GPUs, keyed by
`jax.Device.device_kind`; on CPU the float32 matmul peak is measured once per process
(about a second), because a CPU's peak depends on its cores, vector units and on what
else runs on them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from videogen.kernels import onednn_conv


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense matmul peak FLOP/s of one chip (one GPU, one TPU chip)."""

    name: str
    bf16: float
    # What a float32 program's matmuls reach at JAX's default precision: TPUs run them as
    # one bfloat16 pass (so the bf16 peak), Ampere/Hopper GPUs as TF32 on the tensor cores.
    fp32: float


# Vendor datasheet peaks without sparsity. Matched in order against device_kind: exact names
# for TPUs ("TPU v5 lite" must not match "TPU v5"), substrings for GPUs.
TPU_PEAKS = {
    "TPU v4": DevicePeak("TPU v4", 275e12, 275e12),
    "TPU v5 lite": DevicePeak("TPU v5e", 197e12, 197e12),
    "TPU v5e": DevicePeak("TPU v5e", 197e12, 197e12),
    "TPU v5": DevicePeak("TPU v5p", 459e12, 459e12),
    "TPU v5p": DevicePeak("TPU v5p", 459e12, 459e12),
    "TPU v6 lite": DevicePeak("TPU v6e", 918e12, 918e12),
    "TPU v6e": DevicePeak("TPU v6e", 918e12, 918e12),
}
GPU_PEAKS = (
    ("H100 PCIe", DevicePeak("H100 PCIe", 756e12, 378e12)),
    ("H100", DevicePeak("H100 SXM", 989e12, 494.7e12)),
    ("A100", DevicePeak("A100", 312e12, 156e12)),
)


def table_peak(device_kind: str) -> DevicePeak | None:
    """The table's peak for a `device_kind`, or None when the table does not know it."""
    if device_kind in TPU_PEAKS:
        return TPU_PEAKS[device_kind]
    for pattern, peak in GPU_PEAKS:
        if pattern in device_kind:
            return peak
    return None


def _best_seconds(fn: Callable[[], object], budget_seconds: float, max_runs: int = 50) -> float:
    """Best time of repeated runs within a time budget (the least disturbed run on a shared
    machine is the best estimate of what the hardware can do)."""
    fn()  # warm-up (and compilation)
    best, started = float("inf"), time.perf_counter()
    for _ in range(max_runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() - started > budget_seconds:
            break
    return best


def measure_cpu_matmul_peak(n: int = 1024, budget_seconds: float = 0.5) -> float:
    """This host's float32 matmul FLOP/s: the better of XLA:CPU's and numpy's BLAS on an
    [n, n] @ [n, n] product, each timed for about `budget_seconds`.

    The larger of the two, because they can differ by 2x on one machine
    (benchmarks/matmul_peak.py says why); n = 1024 is large enough to use every core.
    """
    if n < 64 or budget_seconds <= 0:
        raise ValueError(f"need n >= 64 and budget_seconds > 0; got n={n}, {budget_seconds}.")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    device = jax.devices("cpu")[0]
    ja, jb = jax.device_put(a, device), jax.device_put(b, device)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    jax_seconds = _best_seconds(lambda: matmul(ja, jb).block_until_ready(), budget_seconds)
    numpy_seconds = _best_seconds(lambda: a @ b, budget_seconds)
    return 2.0 * n**3 / min(jax_seconds, numpy_seconds)


@functools.cache
def cpu_matmul_peak() -> float:
    """`measure_cpu_matmul_peak()`, measured once per process."""
    return measure_cpu_matmul_peak()


def peak_flops_per_device(device: jax.Device, dtype: str) -> tuple[float, str] | None:
    """(peak FLOP/s of one device for matmuls in `dtype` ("bf16" or "fp32"), what it is), or
    None for an accelerator the table does not know.

    On CPU the measured host peak is shared by the host's CPU devices (fake devices of
    `--xla_force_host_platform_device_count` share the same cores), so each gets its share.
    """
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype={dtype!r}; use 'bf16' or 'fp32'.")
    if device.platform == "cpu":
        shares = len([d for d in jax.local_devices() if d.platform == "cpu"])
        return cpu_matmul_peak() / shares, f"measured float32 CPU matmul peak / {shares} devices"
    peak = table_peak(device.device_kind)
    if peak is None:
        return None
    return getattr(peak, dtype), f"{peak.name} {dtype} peak"


# An HLO instruction whose result is bf16 and which is a dot or a convolution, e.g.
# "%dot.3 = bf16[8,16]{1,0} dot(...)" or "convolution.1 = bf16[...] convolution(".
_BF16_MATMUL = re.compile(r"=\s*bf16\[[^\]]*\][^ ]*\s+(dot|convolution)\(")


def matmul_dtype(hlo_text: str) -> str:
    """ "bf16" when the program's matmuls or convolutions produce bfloat16, else "fp32"."""
    return "bf16" if _BF16_MATMUL.search(hlo_text) else "fp32"


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    flops_per_device: float  # per execution, from XLA's cost analysis (nan if unknown)
    dtype: str  # of its matmuls: which peak it is judged against


def program_cost(compiled: jax.stages.Compiled) -> ProgramCost:
    """FLOPs per device of one execution of a compiled (per-device, SPMD) program,
    the oneDNN convolutions' included (XLA counts nothing inside a custom call)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text() or ""
    flops = float((cost or {}).get("flops", float("nan"))) + onednn_conv.hlo_flops(text)
    return ProgramCost(flops, matmul_dtype(text))


def mfu(flops_per_device: float, steps_per_second: float, peak_per_device: float) -> float:
    """Model FLOPs utilisation in [0, 1] (more than 1 means the peak is wrong)."""
    if peak_per_device <= 0:
        raise ValueError(f"peak_per_device={peak_per_device}; a peak must be positive.")
    return flops_per_device * steps_per_second / peak_per_device
