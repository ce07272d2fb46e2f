r"""Memory planner: per-device bytes of a config's train step on a mesh, and whether it fits.

  python -m videogen.plan --config=experiments/magvit2_k600.py --mesh=8,1,1 [--accelerator=v4]
  python -m videogen.plan --config=experiments/videopoet.py:size=8B --mesh=64,1,1 \
      --config.batch_size=512

The train step is the trainer's own (`videogen.memory_plan`), compiled for a mesh of
`--mesh` fake CPU devices (`--xla_force_host_platform_device_count`, set here before JAX
starts its backend) on abstract inputs: nothing of the state is allocated, so a 256-device
plan of an 8B model runs on a laptop. The step is traced with the convolutions in their
accelerator form (`memory_plan.kernel_form`), and XLA:CPU's buffer assignment stands in
for the accelerator's: the same program, partitioned the same way, but fused and laid out
by another backend, so treat the numbers as an estimate (benchmarks/memory_plan_check.py
measures how close the planner is to a real step on CPU).

When the step does not fit an accelerator (TPU v4 32 GiB, v5e 16 GiB, H100 80 GiB), the
planner compiles it again with each switch the config has (model.remat, bf16 computation
with `precision=bfloat16`, FSDP over the data-parallel devices, half the per-device batch)
and names the first that fits.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

# HBM per chip (per GPU), GiB.
ACCELERATORS = {"v4": 32, "v5e": 16, "h100": 80}
# A plan fits when its peak is at most this share of the memory: the runtime, the
# collectives' buffers and fragmentation take the rest.
USABLE_FRACTION = 0.9
# Compile-time flags that leave XLA's buffer assignment alone (LLVM codegen only) but
# halve the planner's compile time (benchmarks/compile_time.py).
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
)


def define_flags() -> dict:
    """The command line's flags; defined only when run as a program, so that importing this
    module (tests) does not clash with videogen.main's --config."""
    return {
        "config": config_flags.DEFINE_config_file(
            "config",
            None,
            "Experiment config file, e.g. experiments/magvit2_k600.py[:args].",
            lock_config=True,
        ),
        "mesh": flags.DEFINE_string(
            "mesh",
            "8,1,1",
            "Mesh shape data,fsdp,tensor; its product is the number of fake devices compiled for.",
        ),
        "accelerator": flags.DEFINE_enum(
            "accelerator", None, sorted(ACCELERATORS), "Judge the fit on this one (default: all)."
        ),
        "switches": flags.DEFINE_bool(
            "switches",
            True,
            "When the step does not fit, compile with remat / bf16 / FSDP / half batch.",
        ),
        "captions": flags.DEFINE_integer(
            "captions", 1024, "VideoPoet: caption-table rows (replicated on every device)."
        ),
    }


def parse_mesh(text: str) -> tuple[int, int, int]:
    """ "8,1,1" -> (8, 1, 1); an error naming the value and the expected form."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"--mesh={text!r}; give three positive sizes data,fsdp,tensor, e.g. --mesh=8,1,1."
        )
    return shape


def use_fake_devices(count: int) -> None:
    """Makes JAX's CPU backend expose `count` devices; must run before the backend starts."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(
        [*kept, f"--xla_force_host_platform_device_count={count}", *FAST_COMPILE_FLAGS]
    )


def gib(n: float) -> str:
    """Bytes in GiB, to the MiB ("0.004" GiB reads badly next to "12.31")."""
    return f"{n / 2**30:.3f}"


def fits(total: int, accelerator: str) -> bool:
    return total <= USABLE_FRACTION * ACCELERATORS[accelerator] * 2**30


def format_plan(plan) -> str:
    """The categories and the total as a small table (GiB per device)."""
    rows = [f"{name:<12} {gib(value):>9} GiB" for name, value in plan.categories().items()]
    if plan.activations == 0:
        rows.append("(activations not split from temporaries: one example per device)")
    rows.append(
        f"{'total':<12} {gib(plan.total):>9} GiB  (XLA: arguments {gib(plan.xla_arguments)}, "
        f"temporaries {gib(plan.xla_temp)}, outputs {gib(plan.xla_outputs)}, "
        f"aliased {gib(plan.xla_aliased)})"
    )
    return "\n".join(rows)


def switch_configs(config, mesh_shape: tuple[int, int, int]):
    """(name, config, mesh shape) of each switch this config has, and all of them together."""
    from videogen import memory_plan

    data, fsdp, tensor = mesh_shape
    parallel = data * fsdp
    out = []
    if "remat" in config.model and not config.model.remat:
        out.append(("remat (model.remat=True)", dict(model__remat=True), mesh_shape))
    if config.precision != "bfloat16":
        out.append(("bf16 (precision=bfloat16)", dict(precision="bfloat16"), mesh_shape))
    # FSDP over every data-parallel device: the fsdp axis takes them all, under a preset that
    # shards over it ("data_parallel" keeps every parameter whole on any mesh).
    fsdp_preset = "fsdp" if config.sharding == "data_parallel" else config.sharding
    fsdp_mesh = (1, parallel, tensor)
    with_fsdp = parallel > 1 and (data > 1 or fsdp_preset != config.sharding)
    if with_fsdp:
        name = f"FSDP (sharding={fsdp_preset}, mesh {fsdp_mesh})"
        out.append((name, dict(sharding=fsdp_preset), fsdp_mesh))
    per_device = config.batch_size // parallel
    if per_device >= 2:
        half = per_device // 2 * parallel
        name = f"half per-device batch (batch_size={half}, or this batch on twice the devices)"
        out.append((name, dict(batch_size=half), mesh_shape))
    if len(out) > 1:
        values = {k: v for _, o, _ in out for k, v in o.items()}
        out.append(("all of the above", values, fsdp_mesh if with_fsdp else mesh_shape))
    return [(name, memory_plan.override(config, **values), shape) for name, values, shape in out]


def run(
    config,
    mesh_shape: tuple[int, int, int],
    accelerators: Sequence[str],
    switches: bool,
    captions: int,
) -> dict:
    """Prints the plan and the verdicts; returns {"plan", "fits", "switches"}."""
    import jax

    from videogen import memory_plan, sharding

    count = math.prod(mesh_shape)
    if len(jax.devices()) < count:
        raise ValueError(
            f"--mesh={','.join(map(str, mesh_shape))} needs {count} devices; JAX has "
            f"{len(jax.devices())}. Run the planner in a fresh process (python -m videogen.plan)."
        )
    options = {"captions": captions} if config.trainer == "videopoet" else {}

    def plan_on(cfg, shape, split):
        mesh = sharding.make_mesh(shape, jax.devices()[: math.prod(shape)])
        return memory_plan.plan(cfg, mesh, split_activations=split, **options)

    plan = plan_on(config, mesh_shape, True)
    print(
        f"{config.trainer}: {plan.parameter_count / 1e6:.1f}M trained parameters, mesh "
        f"{mesh_shape}, batch {plan.global_batch} ({plan.per_device_batch} per device); "
        "bytes per device:"
    )
    print(format_plan(plan))
    verdicts = {a: fits(plan.total, a) for a in accelerators}
    tried = []
    if switches and not all(verdicts.values()):
        for name, cfg, shape in switch_configs(config, mesh_shape):
            total = plan_on(cfg, shape, False).total
            tried.append((name, total))
            print(f"  with {name}: {gib(total)} GiB")
    for a in accelerators:
        limit = ACCELERATORS[a]
        if verdicts[a]:
            print(
                f"{a} ({limit} GiB): fits ({gib(plan.total)} GiB <= {USABLE_FRACTION:.0%} of "
                f"{limit} GiB)."
            )
            continue
        fixes = [name for name, total in tried if fits(total, a)]
        advice = (
            f"fits with {fixes[0]}"
            if fixes
            else (
                "no switch tried makes it fit: add devices (FSDP over more chips) or lower "
                "--config.batch_size"
                if tried
                else "run with --switches to try remat/bf16/FSDP/batch"
            )
        )
        print(f"{a} ({limit} GiB): does NOT fit ({gib(plan.total)} GiB); {advice}.")
    return {"plan": plan, "fits": verdicts, "switches": tried}


def main(argv: Sequence[str], flag_values: dict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = flag_values["config"].value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=experiments/magvit2_k600.py")
    mesh_shape = parse_mesh(flag_values["mesh"].value)
    accelerator = flag_values["accelerator"].value
    accelerators = [accelerator] if accelerator else sorted(ACCELERATORS)
    run(
        config,
        mesh_shape,
        accelerators,
        flag_values["switches"].value,
        flag_values["captions"].value,
    )


def _preparse_mesh(argv: Sequence[str]) -> tuple[int, int, int]:
    """--mesh from the command line before absl parses it: the device count must be set
    before JAX's backend starts, which loading the config may already trigger."""
    for i, arg in enumerate(argv):
        if arg.startswith("--mesh="):
            return parse_mesh(arg.split("=", 1)[1])
        if arg == "--mesh" and i + 1 < len(argv):
            return parse_mesh(argv[i + 1])
    return (8, 1, 1)


if __name__ == "__main__":
    use_fake_devices(math.prod(_preparse_mesh(sys.argv)))
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
