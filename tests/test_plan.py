"""The memory planner (videogen/plan.py, videogen/memory_plan.py) and MFU in the loop's logs."""

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tiny_configs import MASKGIT_TINY, configure, load_experiment, tiny
from videogen import memory_plan, mfu, plan, sharding
from videogen.tasks import commit_tokens
from videogen.trainers import frozen_tokenizer, loop, maskgit


def _tiny_tokenizer():
    """The tiny quickstart tokenizer without GAN and LPIPS."""
    return tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **{"loss.generator_adversarial_weight": 0.0, "loss.perceptual_weight": 0.0},
    )


def _param_count(config) -> int:
    model = nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(config))
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _tiny_maskgit():
    """A 1-layer MAGVIT transformer training from token files (the frozen tokenizer is only
    an argument of the step, not run in it): the cheapest step to compile."""
    return configure(
        load_experiment("quickstart_generator").get_config(),
        **{
            **MASKGIT_TINY,
            "tokenizer_command": "python -m videogen.main --config=experiments/quickstart.py",
        },
    )


def test_plan_of_a_tiny_transformer_on_8_devices(capsys):
    config = _tiny_maskgit()
    result = plan.run(config, (8, 1, 1), ["v5e"], switches=False, captions=1)
    out = capsys.readouterr().out
    planned = result["plan"]
    categories = planned.categories()
    assert set(categories) == {
        "parameters",
        "optimizer",
        "ema",
        "other_state",
        "frozen",
        "batch",
        "activations",
        "temporaries",
    }
    for name in ("parameters", "optimizer", "frozen", "batch", "activations", "temporaries"):
        assert categories[name] > 0, name
        assert name in out
    # The known count: the transformer of the trainer's own build_model, float32.
    setup = commit_tokens.make_setup(config, memory_plan._abstract_tokenizer(config))
    model = nnx.eval_shape(lambda: maskgit.build_model(config, setup))
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert planned.parameter_count == count
    # Data parallel (8, 1, 1): every device holds all parameters and both Adam moments.
    assert planned.parameters == count * 4
    assert planned.optimizer >= 2 * count * 4
    assert planned.ema == 0  # the transformer keeps no EMA
    assert planned.batch == (8 * setup.num_tokens * setup.num_factors + 8) * 4 // 8
    assert planned.total > planned.parameters + planned.optimizer
    assert result["fits"] == {"v5e": True} and "v5e (16 GiB): fits" in out


def test_fsdp_shards_the_parameter_bytes():
    """On (1, 8, 1) the "fsdp" preset splits the kernels' output channels 8 ways (biases and
    norms stay whole); "data_parallel" on the same mesh keeps every parameter whole."""
    config = _tiny_tokenizer()
    mesh = sharding.make_mesh((1, 8, 1), jax.devices()[:8])
    replicated = memory_plan.state_bytes(
        memory_plan.step_inputs(memory_plan.override(config, sharding="data_parallel"), mesh).state
    )[0]
    sharded_inputs = memory_plan.step_inputs(memory_plan.override(config, sharding="fsdp"), mesh)
    sharded = memory_plan.state_bytes(sharded_inputs.state)[0]
    count = _param_count(config)
    expected = sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * 4
        for leaf in jax.tree.leaves(nnx.state(sharded_inputs.state["model"], nnx.Param))
    )
    assert sharded["parameters"] == expected
    assert count * 4 / 8 <= sharded["parameters"] < 0.3 * count * 4
    assert replicated["parameters"] == count * 4


def test_fsdp_switch_moves_the_data_parallel_devices_to_the_fsdp_axis_and_preset():
    config = memory_plan.override(_tiny_tokenizer(), sharding="data_parallel")
    switches = {name: (cfg, shape) for name, cfg, shape in plan.switch_configs(config, (8, 1, 1))}
    cfg, shape = switches["FSDP (sharding=fsdp, mesh (1, 8, 1))"]
    assert cfg.sharding == "fsdp" and shape == (1, 8, 1)
    assert switches["all of the above"][0].sharding == "fsdp"
    # Already FSDP over every data-parallel device: nothing to switch to.
    fsdp = memory_plan.override(config, sharding="fsdp_tensor")
    assert not any(name.startswith("FSDP") for name, _, _ in plan.switch_configs(fsdp, (1, 8, 1)))


def test_bad_mesh_and_batch_are_named():
    with pytest.raises(ValueError, match=r"--mesh='8,1'.*e\.g\. --mesh=8,1,1"):
        plan.parse_mesh("8,1")
    config = _tiny_tokenizer()  # batch 8
    mesh = sharding.make_mesh((1, 1, 1))
    with pytest.raises(ValueError, match="planner knows"):
        memory_plan.step_inputs(memory_plan.override(config, trainer="stages"), mesh)
    with pytest.raises(ValueError, match=r"batch_size=6 .* data-parallel size 4.*batch_size=4"):
        memory_plan.step_inputs(
            memory_plan.override(config, batch_size=6),
            sharding.make_mesh((4, 1, 1), jax.devices()[:4]),
        )


def test_peak_table_and_matmul_dtype():
    assert mfu.table_peak("TPU v5 lite").name == "TPU v5e"
    assert mfu.table_peak("TPU v4").bf16 == 275e12
    assert mfu.table_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert mfu.table_peak("NVIDIA A100-SXM4-40GB").fp32 == 156e12
    assert mfu.table_peak("some new chip") is None
    assert mfu.matmul_dtype("%d = bf16[8,16]{1,0} dot(%a, %b)") == "bf16"
    assert mfu.matmul_dtype("%d = f32[8,16]{1,0} dot(%a, %b)") == "fp32"
    assert mfu.mfu(2e9, 10.0, 4e10) == pytest.approx(0.5)


def test_mfu_of_a_jitted_step_is_logged_with_steps_per_second(caplog, monkeypatch):
    """A matmul step on a 4-device mesh: XLA counts 2 n^3 / 4 FLOPs per device, the loop's
    utilisation turns that and steps/s into MFU against the measured CPU peak, and the
    progress line shows both."""
    mesh = sharding.make_mesh((4, 1, 1), jax.devices()[:4])
    n = 256

    def step(state, batch):
        return {"w": state["w"]}, {"loss": jnp.sum(batch["x"] @ state["w"])}

    program = loop.jit_step(
        step, {"w": NamedSharding(mesh, PartitionSpec())}, mesh, preset="data_parallel"
    )
    x = jax.device_put(jnp.ones((n, n)), sharding.batch_sharding(mesh))
    program({"w": jnp.ones((n, n))}, {"x": x})
    utilisation = loop.Utilisation(jax.devices()[0])
    perf = utilisation(steps_per_second=100.0)
    assert perf["perf/gflops_per_step_per_device"] == pytest.approx(2 * n**3 / 4 / 1e9, rel=0.05)
    peak = mfu.cpu_matmul_peak() / len(jax.local_devices())
    assert perf["perf/mfu"] == pytest.approx(2 * n**3 / 4 * 100.0 / peak, rel=0.05)

    written = []
    writer = type("W", (), {"write_scalars": lambda self, step, values: written.append(values)})()
    progress = loop.Progress(10, writer, utilisation)
    clock = iter([0.0, 2.0, 2.0])
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    progress.start(1)
    with caplog.at_level("INFO"):
        progress.sync(5)
    assert written[0]["steps_per_sec"] == 2.0 and written[0]["perf/mfu"] > 0
    assert re.search(r"2\.00 steps/s, 0\.008\d* GFLOP/step/device, MFU \d", caplog.text)
