"""Mixed precision (`config.precision`, videogen/precision.py): bf16 computation keeps the
parameters, optimizer state and EMA in float32, hands XLA bf16 matmuls and convolutions,
and trains to the float32 losses within a stated tolerance.

XLA:CPU runs bf16 dots and convolutions as float32 ones between conversions, so the
program compiled here never shows a bf16 dot; the dtype checks read the program the trainer
gives XLA (the lowered HLO), which is what an accelerator compiles as it is.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tiny_configs import (
    VIDEOPOET_TINY,
    configure,
    load_experiment,
    tiny,
    tiny_audio,
    tiny_maskgit,
)
from videogen import memory_plan, mfu, optim, plan, precision, sharding
from videogen.data import pipeline, sources
from videogen.tasks import commit_tokens
from videogen.trainers import audio_tokenizer as audio_trainer
from videogen.trainers import frozen_tokenizer, maskgit
from videogen.trainers import tokenizer as tokenizer_trainer

STEPS = 3
PRECISIONS = ("float32", "bfloat16")


def _batches(config, source, fields, count=STEPS):
    """The first `count` training batches of `source`, as the trainer would read them."""
    iterator = pipeline.make_iterator(
        source, global_batch_size=config.batch_size, shuffle=True, seed=0, fields=fields
    )
    return [next(iterator) for _ in range(count)]


def _train(step, state, frozen, batches):
    """Compiles `step(state, *frozen, batch)` once and runs it on each batch: (the lowered
    program's HLO text, the losses, the final state)."""
    lowered = jax.jit(step).lower(state, *frozen, batches[0])
    compiled = lowered.compile()
    losses = []
    for batch in batches:
        state, metrics = compiled(state, *frozen, batch)
        losses.append(float(metrics["loss"]))
    return lowered.as_text(dialect="hlo"), np.array(losses), state


def _float_dtypes(state) -> set:
    """The dtypes of the state's floating-point arrays (concrete or abstract)."""
    leaves = jax.tree.leaves(nnx.to_pure_dict(state))
    return {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.fixture(scope="module")
def tokenizer_runs():
    """STEPS tokenizer steps with the GAN on from step 0 (the discriminator in bf16, its R1
    and LeCAM terms in float32); LPIPS off (a frozen float32 network, and costly to
    compile); two levels instead of the tiny model's three, to compile a third faster."""

    def run(value):
        config = tiny(
            load_experiment("quickstart_tokenizer").get_config(),
            **{
                "model.channel_multipliers": (1, 2),
                "model.temporal_downsample": (True,),
                "discriminator.channel_multipliers": (2,),
                "loss.perceptual_weight": 0.0,
                "loss.adversarial_start_step": 0,
                "precision": value,
            },
        )
        graphdef, state = nnx.split(tokenizer_trainer.create_train_state(config))
        schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
        step = functools.partial(
            tokenizer_trainer.train_step, graphdef, None, config, schedule, True
        )
        batches = _batches(config, sources.train_source(config), ("video",))
        return _train(step, state, (None,), batches)

    return {value: run(value) for value in PRECISIONS}


@pytest.fixture(scope="module")
def maskgit_runs():
    """STEPS COMMIT steps (FP and CG tasks) on the same random token batches, as from token
    files; the frozen tokenizer is only an argument of the step, so it is built abstractly."""
    tokenizer_config = tiny(load_experiment("quickstart_tokenizer").get_config())
    tokenizer = nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(tokenizer_config))
    tokenizer_graphdef, tokenizer_state = nnx.split(tokenizer)

    def run(value):
        config = tiny_maskgit("quickstart_generator", None, "unused", precision=value)
        setup = commit_tokens.make_setup(config, tokenizer)
        rng = np.random.default_rng(0)
        batches = [
            {
                "tokens": rng.integers(
                    0,
                    setup.sub_vocab_size,
                    (config.batch_size, setup.num_tokens, setup.num_factors),
                    np.int32,
                ),
                "label": rng.integers(0, config.num_classes, (config.batch_size,), np.int32),
            }
            for _ in range(STEPS)
        ]
        graphdef, state = nnx.split(maskgit.create_train_state(config, setup))
        schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
        step = functools.partial(
            maskgit.train_step, graphdef, tokenizer_graphdef, setup, config, schedule
        )
        return _train(step, state, (tokenizer_state,), batches)

    return {value: run(value) for value in PRECISIONS}


# Largest relative loss gap, bf16 against float32, over STEPS steps from the same
# initialisation and batches. Step 1's gap is the forward pass's rounding alone; later
# steps add the updates': Adam moves every parameter by about +-lr in its first steps
# whatever the gradient's size, so a gradient bf16 rounds across zero moves its parameter
# the other way. Measured here (largest over the 3 steps): tokenizer 6.0e-4, stage 2
# 1.0e-5; the tolerances leave 5x and 10x of margin for another machine's summation
# order. 20-step numbers of the quickstart configs are in BUILD_NOTES.md ("Mixed
# precision").
TOLERANCES = {"tokenizer": 3e-3, "maskgit": 1e-4}


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_bf16_losses_match_float32_within_tolerance(name, request):
    runs = request.getfixturevalue(f"{name}_runs")
    f32, bf16 = runs["float32"][1], runs["bfloat16"][1]
    gap = np.abs(bf16 - f32) / np.abs(f32)
    assert np.all(np.isfinite(bf16))
    assert gap.max() < TOLERANCES[name], (name, f32, bf16, gap)
    assert gap.max() > 0, f"{name}: the bf16 run computed exactly the float32 numbers"


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_parameters_optimizer_state_and_ema_stay_float32(name, request):
    runs = request.getfixturevalue(f"{name}_runs")
    for value, (_, _, state) in runs.items():
        assert _float_dtypes(state) == {jnp.dtype(jnp.float32)}, (name, value)


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_bf16_run_has_bf16_matmuls_and_the_float32_run_no_bf16(name, request):
    runs = request.getfixturevalue(f"{name}_runs")
    assert mfu.matmul_dtype(runs["bfloat16"][0]) == "bf16", name
    assert "bf16" not in runs["float32"][0], name


def _audio_program(value):
    """The codec's (GAN on) abstract train state and lowered train step."""
    config = tiny_audio(precision=value)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: audio_trainer.create_train_state(config)))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    step = functools.partial(audio_trainer.train_step, graphdef, config, schedule)
    source = sources.train_source(config, with_audio=True)
    batch = _batches(config, source, ("audio",), count=1)[0]
    return state, jax.jit(step).lower(state, batch).as_text(dialect="hlo")


def _videopoet_program(value):
    """The prefix LM's abstract train state and lowered train step, as the memory planner
    builds them (the frozen tokenizers from the configs their commands name)."""
    config = configure(
        load_experiment("quickstart_videopoet").get_config(),
        **{**VIDEOPOET_TINY, "precision": value},
    )
    inputs = memory_plan.step_inputs(config, sharding.make_mesh((1, 1, 1)), captions=2)
    return inputs.state, inputs.program.lower(*inputs.args()).as_text(dialect="hlo")


@pytest.mark.parametrize("program", [_audio_program, _videopoet_program])
def test_audio_and_videopoet_steps_lower_to_bf16_with_a_float32_state(program):
    """Lowered, not run: their parity is the shared layers' (the transformer stack of the
    stage-2 test, the conv and quantizer code paths of the tokenizer test)."""
    texts = {}
    for value in PRECISIONS:
        state, texts[value] = program(value)
        assert _float_dtypes(state) == {jnp.dtype(jnp.float32)}, value
    assert mfu.matmul_dtype(texts["bfloat16"]) == "bf16"
    assert "bf16" not in texts["float32"]


def test_an_unknown_precision_is_named_with_the_valid_values():
    config = tiny_audio(precision="float16")
    with pytest.raises(ValueError, match=r"precision='float16'.*\('float32', 'bfloat16'\)"):
        audio_trainer.create_train_state(config)
    assert precision.compute_dtype(configure(config, precision="bfloat16")) == jnp.bfloat16


def test_planner_compiles_the_precision_switch():
    """A float32 config's switches include bf16 as a config the planner compiles; a bf16
    config has no such switch left."""
    config = tiny(load_experiment("quickstart_tokenizer").get_config())
    switches = {name: cfg for name, cfg, _ in plan.switch_configs(config, (2, 1, 1))}
    assert switches["bf16 (precision=bfloat16)"].precision == "bfloat16"
    assert switches["all of the above"].precision == "bfloat16"
    bf16 = memory_plan.override(config, precision="bfloat16")
    assert not any("bf16" in name for name, _, _ in plan.switch_configs(bf16, (2, 1, 1)))
