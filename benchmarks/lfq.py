"""LFQ forward+backward time and peak memory at K=18 bits: ours beside vector-quantize-pytorch.

    /work/venv/bin/python benchmarks/lfq.py [--batches=1,2,4,8] [--repeats=5] \
        [--torch-python=/work/bench_venv/bin/python] [--memory-limit-gb=12]

Times the gradient, w.r.t. the input z ~ N(0, 1) float32 [B, 5, 16, 16, 18], of
``commitment_weight * commitment + entropy_weight * entropy`` (Eq. 5.5, codebook
of 2^18 codes, temperature 0.01, i.e. their ``inv_temperature=100``):
  - ours: `videogen.models.quantizers.LFQ`, exact codebook entropy (half-split
    matmul, no [tokens, 2^18] array), as a jitted `jax.value_and_grad`; extra
    rows give the grouped approximation (--grouped=2 groups; 1 turns them off);
  - theirs: `vector_quantize_pytorch.LFQ` (dim 18, no projections, full
    codebook), ``loss.backward()``. It forms [tokens, 2^18] arrays. Their
    default, --their-fraction=1, puts every token in both entropies (exact);
    a fraction f < 1 is their memory saver: both entropies from a random f of
    the tokens (an approximation).

Every (implementation, B) runs in a fresh subprocess, so one run's allocator
state or peak cannot leak into another's. Ours runs under this interpreter with
JAX_PLATFORMS=cpu and XLA_FLAGS untouched; theirs runs under --torch-python, a
separate venv that is not a videogen dependency. Create it with

    python3 -m venv /work/bench_venv
    /work/bench_venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /work/bench_venv/bin/pip install vector-quantize-pytorch

Time is the median of --repeats forward+backward calls after --warmup calls
(JAX compiles ahead of time, before any call). Peak memory is the process's
resident-set high-water mark (VmHWM in /proc/self/status) minus its resident
set (VmRSS) just before the first call; the high-water mark is reset by
writing 5 to /proc/self/clear_refs at that moment, so import and compile
transients are not counted (getrusage's ru_maxrss has no reset of its own and
would count them). JAX also reports the compiled program's temp buffer bytes
(`memory_analysis()`), a figure independent of the allocator.

The host is shared: each subprocess caps its address space at --memory-limit-gb
above its size before the first call, so a run that would exhaust the machine
fails to allocate instead of waking the OOM killer; such a run is reported as
"> limit" (a measured outcome, not an error). Any other failure on either side
exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = "/work/bench_venv/bin/python"
NUM_BITS = 18
TOKEN_SHAPE = (5, 16, 16)
RESULT_PREFIX = "RESULT "
MIB = 2**20


# ---- measurement helpers, shared by both children (standard library only) ----


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux.")


def _cap_address_space(limit_gb: float) -> None:
    """Allow `limit_gb` more virtual memory than the process has now (RLIMIT_AS)."""
    import resource

    limit = _proc_status_kib("VmSize") * 1024 + int(limit_gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _measure(step, warmup: int, repeats: int):
    """Median time of `step()` and the resident-set peak above the level before its first call.

    Returns ``(stats, output of the last call)``.
    """
    baseline_kib = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    for _ in range(warmup):
        step()
    seconds = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        start = time.perf_counter()
        output = step()
        seconds.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        # Per timed call: page faults on fresh memory, and the system time they mostly are.
        "minor_faults": (after.ru_minflt - usage.ru_minflt) / repeats,
        "system_s": (after.ru_stime - usage.ru_stime) / repeats,
        "median_ms": statistics.median(seconds) * 1e3,
        "min_ms": min(seconds) * 1e3,
        "max_ms": max(seconds) * 1e3,
        "baseline_mb": baseline_kib * 1024 / MIB,
        "peak_mb": (_proc_status_kib("VmHWM") - baseline_kib) * 1024 / MIB,
    }
    return stats, output


def _input(batch: int, seed: int):
    import numpy as np

    shape = (batch, *TOKEN_SHAPE, NUM_BITS)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# ---- children: one implementation, one batch size, in a fresh process ----


def _run_ours(args) -> dict:
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp

    from videogen.models.quantizers import LFQ

    lfq = LFQ(NUM_BITS, entropy_temperature=args.temperature, entropy_groups=args.groups)

    def loss_fn(z):
        _, aux = lfq(z)
        losses = aux["losses"]
        return (
            args.commitment_weight * losses["commitment"] + args.entropy_weight * losses["entropy"]
        )

    z = jnp.asarray(_input(args.batch, args.seed))
    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(z).compile()
    memory = compiled.memory_analysis()
    _cap_address_space(args.memory_limit_gb)
    result, (loss, grad) = _measure(
        lambda: jax.block_until_ready(compiled(z)), args.warmup, args.repeats
    )
    return {
        **result,
        "loss": float(loss),
        "grad_norm": float(jnp.linalg.norm(grad)),
        "xla_temp_mb": memory.temp_size_in_bytes / MIB,
        "threads": f"XLA CPU default pool, {len(os.sched_getaffinity(0))} visible cores",
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax")},
    }


def _run_theirs(args) -> dict:
    from importlib.metadata import version

    import torch
    from vector_quantize_pytorch import LFQ

    torch.set_num_threads(args.threads)
    lfq = LFQ(
        dim=NUM_BITS,
        codebook_size=2**NUM_BITS,
        entropy_loss_weight=args.entropy_weight,
        commitment_loss_weight=args.commitment_weight,
        diversity_gamma=1.0,
        frac_per_sample_entropy=args.their_fraction,
        has_projections=False,
    )
    lfq.train()  # their entropy and commitment losses are computed only in training mode
    # Their layout is (batch, sequence, dim); LFQ treats every token alike, so
    # flattening [B, 5, 16, 16, 18] to [B, 1280, 18] changes nothing.
    z = torch.from_numpy(_input(args.batch, args.seed)).reshape(args.batch, -1, NUM_BITS)
    z.requires_grad_(True)

    def step():
        z.grad = None
        loss = lfq(z, inv_temperature=1.0 / args.temperature).entropy_aux_loss
        loss.backward()
        return loss

    _cap_address_space(args.memory_limit_gb)
    result, loss = _measure(step, args.warmup, args.repeats)
    return {
        **result,
        "loss": loss.item(),
        "grad_norm": z.grad.norm().item(),
        "threads": f"torch.set_num_threads({torch.get_num_threads()})",
        "versions": {p: version(p) for p in ("torch", "vector-quantize-pytorch")},
    }


def _is_allocation_failure(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or any(
        s in text for s in ("can't allocate memory", "RESOURCE_EXHAUSTED", "Out of memory")
    )


def child_main(args) -> None:
    try:
        result = _run_ours(args) if args.child == "ours" else _run_theirs(args)
    except Exception as error:  # only allocation failures are a result; others propagate
        if not _is_allocation_failure(error):
            raise
        result = {"over_limit": True, "error": str(error).splitlines()[0][:200]}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- parent: runs the children and prints the table ----


def run_child(python: str, child: str, batch: int, groups: int, args) -> dict:
    command = [
        python,
        os.path.abspath(__file__),
        f"--child={child}",
        f"--batch={batch}",
        f"--groups={groups}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
        f"--temperature={args.temperature}",
        f"--entropy-weight={args.entropy_weight}",
        f"--commitment-weight={args.commitment_weight}",
        f"--memory-limit-gb={args.memory_limit_gb}",
        f"--their-fraction={args.their_fraction}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=args.timeout
    )
    lines = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(
            f"{child} at B={batch} failed (exit code {proc.returncode}): "
            f"{shlex.join(command)}\nIts output is above; fix that side before comparing."
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def _fmt(row: dict | None, key: str, spec: str) -> str:
    if row is None:
        return "n/a"
    if row.get("over_limit"):
        return "> limit"
    return format(row[key], spec)


def _theirs_peak(theirs: dict | None, tokens: int, mb_per_token: float | None, limit_mb: float):
    """Their peak MB as text; over the limit, with the linear estimate from the runs that fit."""
    if theirs is None:
        return "n/a"
    if not theirs.get("over_limit"):
        return f"{theirs['peak_mb']:.1f}"
    estimate = f" (est. {mb_per_token * tokens:.0f})" if mb_per_token else ""
    return f"> {limit_mb:.0f}{estimate}"


def _ratio(theirs: dict | None, ours: dict, key: str, limit_mb: float) -> str:
    if theirs is None:
        return "n/a"
    if theirs.get("over_limit"):
        return f"> {limit_mb / ours[key]:.0f}" if key == "peak_mb" else "n/a"
    return f"{theirs[key] / ours[key]:.1f}"


def parent_main(args) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    have_theirs = os.path.exists(args.torch_python)
    if not have_theirs:
        print(
            f"No interpreter at --torch-python={args.torch_python}: the vector-quantize-pytorch "
            "columns are skipped (n/a). Create the venv as the module docstring says:\n"
            "  python3 -m venv /work/bench_venv\n"
            "  /work/bench_venv/bin/pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu\n"
            "  /work/bench_venv/bin/pip install vector-quantize-pytorch\n"
        )
    start_load = os.getloadavg()
    rows = []
    for batch in batches:
        row = {"batch": batch, "tokens": batch * TOKEN_SHAPE[0] * TOKEN_SHAPE[1] * TOKEN_SHAPE[2]}
        row["ours"] = run_child(sys.executable, "ours", batch, 1, args)
        if args.grouped > 1:
            row["grouped"] = run_child(sys.executable, "ours", batch, args.grouped, args)
        for name in ("ours", "grouped"):
            if row.get(name, {}).get("over_limit"):
                raise SystemExit(
                    f"{name} at B={batch} exceeded --memory-limit-gb={args.memory_limit_gb}: "
                    f"{row[name]['error']}. Ours should need well under 1 GB here; this is a bug."
                )
        if have_theirs:
            row["theirs"] = run_child(args.torch_python, "theirs", batch, 1, args)
        rows.append(row)
        print(json.dumps(row), flush=True)

    limit_mb = args.memory_limit_gb * 1024
    fitted = [r for r in rows if "peak_mb" in r.get("theirs", {})]
    # Their [tokens, 2^K] arrays dominate, so their peak grows linearly in tokens.
    mb_per_token = max((r["theirs"]["peak_mb"] / r["tokens"] for r in fitted), default=None)
    first = rows[0]
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
    print(f"load average (1, 5, 15 min) at start {start_load}, at end {os.getloadavg()}")
    print(f"ours: {first['ours']['versions']}, {first['ours']['threads']}")
    if have_theirs:
        theirs = next((r["theirs"] for r in rows if "versions" in r["theirs"]), None)
        if theirs:
            print(
                f"theirs: {theirs['versions']}, {theirs['threads']}, frac_per_sample_entropy="
                f"{args.their_fraction} ({'exact' if args.their_fraction == 1 else 'sub-sampled'})"
            )
    print(
        f"K={NUM_BITS} bits (2^{NUM_BITS} codes), tokens B x {'x'.join(map(str, TOKEN_SHAPE))}, "
        f"loss = {args.commitment_weight} commitment + {args.entropy_weight} entropy, "
        f"temperature {args.temperature}; time = median of {args.repeats} after {args.warmup} "
        f"warm-up; peak = VmHWM - VmRSS before the first call; limit {args.memory_limit_gb} GB"
    )
    print(
        "\n| B | tokens | ours ms | theirs ms | time ratio (theirs/ours) | ours peak MB | "
        "ours XLA temp MB | theirs peak MB | memory ratio (theirs/ours) | loss ours / theirs | "
        "grad norm ours / theirs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, theirs = r["ours"], r.get("theirs")
        print(
            f"| {r['batch']} | {r['tokens']} | {ours['median_ms']:.1f} | "
            f"{_fmt(theirs, 'median_ms', '.1f')} | {_ratio(theirs, ours, 'median_ms', limit_mb)} | "
            f"{ours['peak_mb']:.1f} | {ours['xla_temp_mb']:.1f} | "
            f"{_theirs_peak(theirs, r['tokens'], mb_per_token, limit_mb)} | "
            f"{_ratio(theirs, ours, 'peak_mb', limit_mb)} | "
            f"{ours['loss']:.4f} / {_fmt(theirs, 'loss', '.4f')} | "
            f"{ours['grad_norm']:.5f} / {_fmt(theirs, 'grad_norm', '.5f')} |"
        )
    if args.grouped > 1:
        print(f"\nours, grouped entropy approximation (entropy_groups={args.grouped}):")
        print("| B | ms | peak MB | XLA temp MB | loss | time vs exact |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            g = r["grouped"]
            print(
                f"| {r['batch']} | {g['median_ms']:.1f} | {g['peak_mb']:.1f} | "
                f"{g['xla_temp_mb']:.1f} | {g['loss']:.4f} | "
                f"{g['median_ms'] / r['ours']['median_ms']:.2f} |"
            )
    if have_theirs:
        less = all(
            r["theirs"].get("over_limit") or r["ours"]["peak_mb"] < r["theirs"]["peak_mb"]
            for r in rows
        )
        print(f"\nours uses less peak memory than theirs at every B: {less}")
        print(
            "'> limit': their allocation failed at --memory-limit-gb (address-space cap); "
            "'est.': their measured MB per token times tokens."
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch.set_num_threads; XLA's CPU pool is sized to the visible cores, the default",
    )
    parser.add_argument(
        "--grouped", type=int, default=2, help="entropy_groups of the extra rows; 1: no extra rows"
    )
    parser.add_argument(
        "--their-fraction",
        type=float,
        default=1.0,
        help="their frac_per_sample_entropy: 1 (their default) is exact, < 1 sub-samples tokens",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--entropy-weight", type=float, default=0.1)
    parser.add_argument("--commitment-weight", type=float, default=0.25)
    parser.add_argument("--memory-limit-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    parser.add_argument("--child", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--groups", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (
        args.warmup < 0
        or args.repeats < 1
        or args.threads < 1
        or args.memory_limit_gb <= 0
        or not 0 < args.their_fraction <= 1
    ):
        raise SystemExit(
            "need --warmup >= 0, --repeats >= 1, --threads >= 1, --memory-limit-gb > 0 and "
            f"0 < --their-fraction <= 1; got {args.warmup}, {args.repeats}, {args.threads}, "
            f"{args.memory_limit_gb}, {args.their_fraction}."
        )
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
