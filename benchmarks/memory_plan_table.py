r"""The memory planner's table for the thesis models on 8 / 64 / 256 devices (BUILD_NOTES.md).

    python benchmarks/memory_plan_table.py --model=k600 [--meshes=8,64,256] [--out=plans.jsonl]

One process per model, with as many fake CPU devices as the largest mesh; every mesh is a
data-parallel (N, 1, 1) mesh over the first N of them, under the "data_parallel" sharding
preset. Compiling a train step of these
sizes takes minutes on a 2-core CPU, so the table compiles each model's step once per mesh
(`videogen.memory_plan.plan(split_activations=False)`) and takes the rest from those:

- activations: the meshes differ only in the per-device batch b (the global batch is the
  config's), and XLA's temporaries are `a * b + c`; the fit over the meshes' points gives
  the batch-proportional part a * b (activations) and the rest c (temporaries);
- half the per-device batch: `a * b / 2 + c` from the same fit, and half the batch bytes;
- FSDP over the same devices, (1, N, 1) under the "fsdp" preset: the train state's bytes
  under those shardings (exact, from the abstract state; no compile), temporaries as data
  parallel;
- remat (`model.remat=True`, where the config has it and it is off): compiled once, on the
  smallest mesh (largest per-device batch), and its activation slope used on every mesh;
- bf16 (`precision=bfloat16`, where the config is float32): compiled on every mesh;
- all: FSDP, remat and half the batch together (bf16 is not in it, unlike the CLI's "all
  of the above").

Like `python -m videogen.plan`, the step is traced with the convolutions in their
accelerator form. The CLI compiles every switch instead; this script is its cheap twin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODELS = {
    "k600": "experiments/magvit2_k600.py",  # MAGVIT-v2 K600 tokenizer (thesis 5.4.1)
    "magvit_l": "experiments/magvit_ucf101_cg.py",  # MAGVIT-L, UCF-101 CG (Table 6.10)
    "videopoet_1b": "experiments/videopoet.py:size=1B",
    "videopoet_8b": "experiments/videopoet.py:size=8B",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--table", default="", help="print the markdown table of this JSONL file")
    parser.add_argument("--meshes", default="8,64,256", help="data-parallel device counts")
    parser.add_argument("--out", default="", help="append one JSON line per mesh to this file")
    return parser.parse_args()


ACCELERATORS = {"v4": 32, "v5e": 16, "h100": 80}  # GiB, as videogen/plan.py
USABLE_FRACTION = 0.9  # as videogen/plan.py


def verdict(row: dict, accelerator: str) -> str:
    """ "fits", the first switch that makes it fit, or "no"."""
    limit = USABLE_FRACTION * ACCELERATORS[accelerator] * 2**30
    if row["total"] <= limit:
        return "fits"
    for name in ("remat", "bf16", "fsdp", "half_batch", "all"):
        if name in row["switch_totals"] and row["switch_totals"][name] <= limit:
            return {"half_batch": "half batch", "all": "all switches"}.get(name, name)
    return "no"


def markdown(path: str) -> str:
    """The BUILD_NOTES table of the rows in a JSONL file (GiB per device)."""
    rows = [json.loads(line) for line in open(path)]
    names = ("parameters", "optimizer", "ema", "frozen", "activations", "temporaries", "total")
    lines = [
        "| model | devices | batch / device | "
        + " | ".join(names)
        + " | with remat / bf16 / FSDP / half batch / all | v5e 16 | v4 32 | H100 80 |",
        "|---" * (len(names) + 7) + "|",
    ]
    for r in rows:
        switches = " / ".join(
            f"{r['switch_totals'][k] / 2**30:.1f}" if k in r["switch_totals"] else "-"
            for k in ("remat", "bf16", "fsdp", "half_batch", "all")
        )
        lines.append(
            f"| {r['model']} ({r['parameter_count'] / 1e6:.0f}M) | {r['devices']} | "
            f"{r['per_device_batch']} | "
            + " | ".join(f"{r[n] / 2**30:.2f}" for n in names)
            + f" | {switches} | "
            + " | ".join(verdict(r, a) for a in ("v5e", "v4", "h100"))
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown(args.table))
        return
    if args.model is None:
        raise SystemExit("give --model=<name> to plan, or --table=<file.jsonl> to print one.")
    meshes = [int(n) for n in args.meshes.split(",")]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from videogen import plan as plan_cli

    plan_cli.use_fake_devices(max(meshes))

    import jax
    import numpy as np

    from videogen import config as config_lib
    from videogen import memory_plan, sharding

    path, _, arg = MODELS[args.model].partition(":")
    config = config_lib.load_experiment(os.path.join(memory_plan.ROOT, path)).get_config(
        arg or None
    )
    config = memory_plan.override(config, sharding="data_parallel")
    fsdp_config = memory_plan.override(config, sharding="fsdp")
    devices = jax.devices()

    def mesh_of(shape):
        return sharding.make_mesh(shape, devices[: shape[0] * shape[1] * shape[2]])

    plans, seconds = {}, {}
    for n in meshes:
        started = time.perf_counter()
        plans[n] = memory_plan.plan(config, mesh_of((n, 1, 1)), split_activations=False)
        seconds[n] = time.perf_counter() - started
        print(f"{args.model} on {n}: compiled in {seconds[n]:.0f} s", flush=True)

    batches = np.array([plans[n].per_device_batch for n in meshes], float)
    temps = np.array([plans[n].xla_temp for n in meshes], float)
    slope, intercept = np.polyfit(batches, temps, 1) if len(set(batches)) > 1 else (0.0, temps[0])
    slope = max(slope, 0.0)

    remat_slope = None
    if "remat" in config.model and not config.model.remat:
        n = meshes[0]
        remat = memory_plan.plan(
            memory_plan.override(config, model__remat=True),
            mesh_of((n, 1, 1)),
            split_activations=False,
        )
        remat_slope = max((remat.xla_temp - intercept) / remat.per_device_batch, 0.0)

    # bf16 changes the batch-independent temporaries too (bf16 copies of the parameters), so
    # it is compiled on every mesh rather than read off a slope over the float32 intercept.
    bf16_totals = {}
    if config.precision != "bfloat16":
        bf16_config = memory_plan.override(config, precision="bfloat16")
        for n in meshes:
            bf16_totals[n] = memory_plan.plan(
                bf16_config, mesh_of((n, 1, 1)), split_activations=False
            ).total

    for n in meshes:
        p = plans[n]
        b = p.per_device_batch
        activations = min(slope * b, p.xla_temp)
        transient = p.xla_temp + p.xla_outputs - p.xla_aliased
        fsdp_state = memory_plan.state_bytes(
            memory_plan.step_inputs(fsdp_config, mesh_of((1, n, 1))).state
        )[0]
        state_now = sum(p.categories()[k] for k in memory_plan.STATE_CATEGORIES)
        row = {
            "model": args.model,
            "config": MODELS[args.model],
            "devices": n,
            "global_batch": p.global_batch,
            "per_device_batch": b,
            "parameter_count": p.parameter_count,
            **p.categories(),
            "activations": int(activations),
            "temporaries": int(transient - activations),
            "total": p.total,
            "compile_seconds": round(seconds[n]),
            "switch_totals": {
                "fsdp": p.total - state_now + sum(fsdp_state.values()),
                **({"half_batch": int(p.total - p.batch / 2 - slope * b / 2)} if b >= 2 else {}),
                **(
                    {"remat": int(p.total - activations + remat_slope * b)}
                    if remat_slope is not None
                    else {}
                ),
                **({"bf16": bf16_totals[n]} if bf16_totals else {}),
            },
        }
        # FSDP state, the remat slope (if any), half the batch (if any); not bf16.
        per_example = remat_slope if remat_slope is not None else slope
        kept = b / 2 if b >= 2 else b
        row["switch_totals"]["all"] = int(
            p.total
            - state_now
            + sum(fsdp_state.values())
            - activations
            + per_example * kept
            - (p.batch / 2 if b >= 2 else 0)
        )
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
