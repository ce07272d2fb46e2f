"""Float32 matmul throughput on this machine's CPU: the peak other benchmarks are judged against.

    python benchmarks/matmul_peak.py [--n=2048] [--repeats=10]

Measures an n x n @ n x n float32 product (2 n^3 FLOPs) with numpy (its BLAS,
OpenBLAS in the PyPI wheel) and with jax.jit on the CPU backend (XLA's CPU dot,
backed by Eigen / oneDNN). Each takes the best of `repeats` timed runs after
warm-up, because the fastest run is the least disturbed by other processes and
so the best estimate of what the hardware can do.

The two can differ by 2x on one machine: OpenBLAS picks its kernel from the CPU
model it recognises, and on CPUs newer than its tables (e.g. AMD Zen 5) it
falls back to the AVX2 "Haswell" kernel while XLA uses AVX-512. The report
names the kernel; `OPENBLAS_CORETYPE=SkylakeX` forces the AVX-512 one. Use
`peak_gflops`, the larger of the two, as the machine's float32 peak.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

# A scikit-learn dependency, so always installed with videogen; it is the
# portable way to ask numpy's BLAS which kernel it chose.
from threadpoolctl import threadpool_info

from timing import best_seconds  # a sibling module (benchmarks/ is the script's directory)


def measure_matmul_gflops(n: int = 2048, repeats: int = 10, warmup: int = 2) -> dict:
    """Best-of-`repeats` float32 [n, n] @ [n, n] throughput in GFLOP/s.

    Returns {"n", "flops", "numpy_gflops", "numpy_seconds", "numpy_blas",
    "jax_gflops", "jax_seconds", "jax_device", "peak_gflops"}.
    """
    if n < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need n >= 1, repeats >= 1, warmup >= 0; got {n}, {repeats}, {warmup}.")
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    numpy_seconds = best_seconds(lambda: a @ b, repeats=repeats, warmup=warmup)

    device = jax.devices("cpu")[0]
    ja, jb = jax.device_put(a, device), jax.device_put(b, device)
    # HIGHEST keeps the product a true float32 one; the default is already
    # float32 on CPU, but stating it keeps the number comparable across releases.
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    # Warm-up includes compilation, which must not be timed.
    jax_seconds = best_seconds(matmul, ja, jb, repeats=repeats, warmup=max(warmup, 1))

    blas = [
        f"{i['internal_api']} {i.get('version')} {i.get('architecture', '')}".strip()
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    numpy_gflops = flops / numpy_seconds / 1e9
    jax_gflops = flops / jax_seconds / 1e9
    return {
        "n": n,
        "flops": flops,
        "numpy_gflops": numpy_gflops,
        "numpy_seconds": numpy_seconds,
        "numpy_blas": ", ".join(blas) or "unknown",
        "jax_gflops": jax_gflops,
        "jax_seconds": jax_seconds,
        "jax_device": str(device),
        "peak_gflops": max(numpy_gflops, jax_gflops),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = measure_matmul_gflops(args.n, args.repeats)
    print(
        f"float32 matmul {result['n']}x{result['n']} @ {result['n']}x{result['n']} "
        f"({result['flops'] / 1e9:.1f} GFLOP), best of {args.repeats}:"
    )
    print(
        f"  numpy ({result['numpy_blas']}): {result['numpy_gflops']:.1f} GFLOP/s "
        f"({result['numpy_seconds'] * 1e3:.1f} ms)"
    )
    print(
        f"  jax.jit ({result['jax_device']}): {result['jax_gflops']:.1f} GFLOP/s "
        f"({result['jax_seconds'] * 1e3:.1f} ms)"
    )
    print(f"  peak: {result['peak_gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
