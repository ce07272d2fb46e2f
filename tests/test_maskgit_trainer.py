"""The MAGVIT stage-2 trainer end to end on tiny configs over a tiny frozen tokenizer:
every experiment runs, resume, sharding, the conditioning path, eval and sample modes."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image
from train_states import leaves
from tiny_configs import ROOT, configure, load_experiment, tiny_maskgit

from videogen import main as videogen_main
from videogen import optim
from videogen.data import moving_digits, token_files
from videogen.models.tokenizer import VQVideoTokenizer
from videogen.tasks import commit
from videogen.trainers import maskgit
from videogen.tasks import commit_tokens
from videogen.trainers import frozen_tokenizer, loop, maskgit_generation

EXPERIMENTS = ("magvit2_k600_fp", "magvit_ucf101_cg", "magvit_bair_mt8")


def test_configs_are_the_thesis_recipe():
    """6.5.6 (stage-2 recipe), 5.4.2 (K600 FP on MAGVIT-v2 tokens) and the per-dataset decoding."""
    k600 = load_experiment("magvit2_k600_fp").get_config()
    assert (k600.model.size, k600.model.num_factors) == ("L", 2)
    assert (k600.model.dropout_rate, k600.model.attention_dropout_rate) == (0.1, 0.1)
    opt = k600.optimizer
    assert (opt.peak_lr, opt.b1, opt.b2, opt.weight_decay, opt.grad_clip_norm) == (
        1e-4,
        0.9,
        0.96,
        0.045,
        1.0,
    )
    assert (k600.loss.label_smoothing, k600.mask_schedule, k600.batch_size) == (1e-4, "cosine", 256)
    assert (k600.loss.refine_weight, k600.loss.mask_weight, k600.loss.recons_weight) == (1, 1, 1)
    assert (k600.data.num_frames, k600.data.resolution, k600.class_drop_prob) == (17, 128, 0.1)
    assert tuple(k600.tasks.names) == ("FP",) and k600.tasks.overrides.FP.first_frames == 5
    d = k600.decoding
    assert (d.num_steps, d.schedule, d.choice_temperature) == (12, "cosine", 32.0)
    assert (k600.eval.frechet.num_samples, k600.eval.frechet.num_frames) == (50_000, 16)
    bair = load_experiment("magvit_bair_mt8").get_config()
    assert set(bair.tasks.names) == set(commit.TASKS) - {"CG", "CFP"}
    assert (bair.decoding.schedule, bair.decoding.choice_temperature) == ("exponential", 400.0)
    ucf = load_experiment("magvit_ucf101_cg").get_config()
    assert (tuple(ucf.tasks.names), ucf.num_classes, ucf.decoding.choice_temperature) == (
        ("CG",),
        101,
        4.5,
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_experiment_builds_and_runs_two_steps(tmp_path, tokenizer_workdir, name, arg):
    config = tiny_maskgit(name, arg, tokenizer_workdir)
    result = videogen_main.run(config, str(tmp_path))
    assert result.step == 2 and len(result.history) == 2
    names = config.tasks.names
    for logged in result.history:
        assert np.isfinite(logged["loss"]) and 0.0 <= logged["masked_accuracy"] <= 1.0
        # Every example is drawn for one task; a task absent from the batch logs no loss.
        counts = [logged[f"tasks/{t}/examples"] for t in names]
        assert sum(counts) == config.batch_size
        for task, count in zip(names, counts):
            assert (f"tasks/{task}/loss" in logged) == (count > 0)
    # Untrained, the loss is near the uniform cross-entropy of 2 factors x 2^3 codes.
    assert abs(result.history[0]["loss"] - 2 * np.log(8)) < 0.5


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_missing_tokenizer_names_the_path_and_the_command(tmp_path, name):
    missing = str(tmp_path / "runs" / "no_tokenizer_here")
    config = load_experiment(name).get_config()
    config.tokenizer_workdir = missing
    with pytest.raises(FileNotFoundError) as info:
        videogen_main.run(config, str(tmp_path / "work"))
    message = str(info.value)
    assert os.path.join(missing, "checkpoints") in message
    assert config.tokenizer_command in message
    # The command names an experiment that exists.
    experiment = config.tokenizer_command.split("--config=")[1].split()[0].split(":")[0]
    assert os.path.exists(os.path.join(ROOT, experiment)), experiment


def test_resume_equals_uninterrupted(tmp_path, tokenizer_workdir):
    """Resuming from the step-2 checkpoint of a 4-step run reproduces its steps 3 and 4:
    parameters, optimizer state, dropout and masking RNG state, data position."""
    config = tiny_maskgit("magvit2_k600_fp", "runlocal", tokenizer_workdir, num_train_steps=4)
    assert config.model.dropout_rate == 0.1  # dropout on: its RNG must resume too
    straight = maskgit.train_and_evaluate(config, str(tmp_path / "straight"))
    # The same run preempted after step 2: only the step-2 checkpoint survives.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    resumed = maskgit.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert [h["step"] for h in resumed.history] == [3, 4]
    a, b = leaves(straight.state), leaves(resumed.state)
    assert len(a) == len(b) > 20
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert straight.history[2:] == resumed.history
    # Each step draws one key from every dropout stream and one masking key.
    state = jax.device_get(nnx.to_pure_dict(resumed.state))
    assert int(state["model"]["embedding_dropout"]["rngs"]["count"]) == 4
    assert int(state["rngs"]["masking"]["count"]) == 4


def test_sharded_equals_unsharded(tmp_path, tokenizer_workdir):
    """3 steps of the 8-task mixture on a 2x2x2 mesh of 8 CPU devices == on 1 device."""
    assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
    results = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        config = tiny_maskgit(
            "magvit_bair_mt8",
            None,
            tokenizer_workdir,
            num_train_steps=3,
            **{"mesh.shape": shape, "checkpoint.every_steps": 3},
        )
        results[shape] = maskgit.train_and_evaluate(config, str(tmp_path / str(shape)))
    one, eight = results[(1, 1, 1)], results[(2, 2, 2)]
    losses = lambda r: [h["loss"] for h in r.history]
    assert len(losses(one)) == 3
    np.testing.assert_allclose(losses(one), losses(eight), rtol=1e-5)
    examples = lambda r: [h["tasks/FP/examples"] for h in r.history]
    assert examples(one) == examples(eight)  # the same tasks were drawn
    sharded = [x for x in jax.tree.leaves(eight.state) if len(x.sharding.device_set) == 8]
    assert any(not x.sharding.is_fully_replicated for x in sharded), "params must be split"


def test_output_ignores_pixels_outside_the_task_condition(tokenizer_workdir):
    """Acceptance: for FP and OPC, condition video -> tokens -> COMMIT input -> transformer
    logits (and Algorithm 1's samples) are identical for two clips that differ only outside
    the task's condition region, and change when a pixel inside it changes."""
    config = tiny_maskgit(
        "magvit_bair_mt8", None, tokenizer_workdir, **{"tasks.names": ("FP", "OPC")}
    )
    configure(config, **{"tasks.weights": (1.0, 1.0)})
    tokenizer, _ = frozen_tokenizer.load_tokenizer(tokenizer_workdir)
    setup = commit_tokens.make_setup(config, tokenizer)
    model = maskgit.build_model(config, setup)
    decoding = config.decoding
    key = jax.random.key(0)

    @jax.jit
    def outputs(video, task_ids):
        labels = jnp.zeros_like(task_ids)
        tokens = commit_tokens.condition_tokens(tokenizer, setup, task_ids, video, with_target=True)
        # Mask ratio 1: the input of Algorithm 1's first step (no target token shown).
        inputs = commit.commit_mask(
            tokens.target,
            tokens.condition,
            tokens.condition_mask,
            jnp.ones(video.shape[:1]),
            key,
            mask_token_id=model.mask_token_id,
        )
        logits = model(inputs.tokens, commit_tokens.prefix_tokens(setup, task_ids, labels))
        sampled, _ = maskgit_generation.sample_tokens(
            model, tokenizer, setup, decoding, video, labels, task_ids, key, guidance_scale=0.0
        )
        return logits, sampled, tokens.target

    source = moving_digits.MovingDigits("eval", num_frames=9, resolution=16, num_examples=2)
    clip, other = (jnp.asarray(source[i]["video"], jnp.float32)[None] / 127.5 - 1 for i in (0, 1))
    for name in ("FP", "OPC"):
        task_ids = jnp.array([setup.task_id(name)])
        region = jnp.asarray(commit.condition_region(setup.tasks[task_ids[0]], 9, 16, 16))
        outside = jnp.where(region[None, ..., None], clip, other)  # same condition pixels
        inside = clip.at[0, 0, 6:10, 6:10].set(1.0)  # a change inside both tasks' regions
        assert bool(region[0, 6:10, 6:10].all())
        logits, sampled, target = outputs(clip, task_ids)
        logits_out, sampled_out, target_out = outputs(outside, task_ids)
        logits_in, _, _ = outputs(inside, task_ids)
        assert not np.array_equal(target, target_out), f"{name}: the clips must tokenize apart"
        np.testing.assert_array_equal(logits, logits_out, err_msg=name)
        np.testing.assert_array_equal(sampled, sampled_out, err_msg=name)
        assert not np.allclose(logits, logits_in), f"{name}: condition pixels must matter"


def test_condition_tokens_from_target_equal_tokenized_condition_video(tokenizer_workdir):
    """Training's shortcut (z̃ = z for FP from 1 + 4k frames and CG under the causal
    tokenizer) gives the tokens of the padded condition video on every condition token,
    and is not taken when a task's condition needs its own tokenization."""
    tokenizer, _ = frozen_tokenizer.load_tokenizer(tokenizer_workdir)
    source = moving_digits.MovingDigits("eval", num_frames=9, resolution=16, num_examples=4)
    video = jnp.stack([jnp.asarray(source[i]["video"], jnp.float32) / 127.5 - 1 for i in range(4)])
    for first_frames in (1, 5):
        config = tiny_maskgit("magvit_bair_mt8", None, tokenizer_workdir)
        configure(config, **{"tasks.names": ("FP", "CG"), "tasks.weights": (1.0, 1.0)})
        configure(
            config, **{"num_classes": 10, "tasks.overrides": {"FP": {"first_frames": first_frames}}}
        )
        setup = commit_tokens.make_setup(config, tokenizer)
        assert setup.condition_from_target
        task_ids = jnp.array([0, 1, 0, 1])
        fast = commit_tokens.condition_tokens(tokenizer, setup, task_ids, video, with_target=True)
        slow = commit_tokens.condition_tokens(tokenizer, setup, task_ids, video, with_target=False)
        np.testing.assert_array_equal(fast.condition_mask, slow.condition_mask)
        assert int(fast.condition_mask.sum()) == 2 * 16 * (1 + (first_frames - 1) // 4)
        read = np.asarray(fast.condition_mask)[..., None]
        np.testing.assert_array_equal(
            np.where(read, fast.condition, 0), np.where(read, slow.condition, 0)
        )
    for names, overrides in ((("FP",), {"FP": {"first_frames": 3}}), (("OPC",), {})):
        config = tiny_maskgit("magvit_bair_mt8", None, tokenizer_workdir)
        configure(config, **{"tasks.names": names, "tasks.weights": (1.0,)})
        configure(config, **{"tasks.overrides": overrides})
        assert not commit_tokens.make_setup(config, tokenizer).condition_from_target, names


def test_copy_last_frame_is_frame_prediction_padding():
    video = np.random.default_rng(0).integers(0, 256, (2, 9, 8, 8, 3), dtype=np.uint8)
    baseline = maskgit_generation.copy_last_frame(video, 5)
    np.testing.assert_array_equal(baseline[:, :5], video[:, :5])
    np.testing.assert_array_equal(baseline[:, 5:], np.repeat(video[:, 4:5], 4, axis=1))
    fp = commit.make_tasks(["FP"], {"FP": {"first_frames": 5}})
    padded = commit.condition_video(fp, jnp.zeros(2, jnp.int32), jnp.asarray(video, jnp.float32))
    np.testing.assert_array_equal(np.asarray(padded).astype(np.uint8), baseline)


def test_with_given_frames_keeps_the_given_frames_and_the_sampled_rest():
    rng = np.random.default_rng(1)
    video, samples = rng.integers(0, 256, (2, 2, 9, 4, 4, 3), dtype=np.uint8)
    shown = maskgit_generation.with_given_frames(samples, video, 5)
    np.testing.assert_array_equal(shown[:, :5], video[:, :5])
    np.testing.assert_array_equal(shown[:, 5:], samples[:, 5:])


def test_class_prompt_errors_and_empty_groups():
    setup = commit_tokens.CommitSetup(
        tasks=commit.make_tasks(["FP", "CG"]),
        task_weights=(1.0, 1.0),
        num_classes=10,
        video_shape=(9, 16, 16),
        latent_shape=(3, 4, 4),
        temporal_factor=4,
        spatial_factor=4,
        causal=True,
        codebook_size=64,
        num_bits=6,
        num_factors=2,
    )
    assert (setup.no_class_id, setup.prefix_vocab_size, setup.sub_vocab_size) == (12, 13, 8)
    prefix = commit_tokens.prefix_tokens(
        setup, jnp.array([0, 1, 1]), jnp.array([3, 3, 7]), jnp.array([True, True, False])
    )
    # FP never sees the class; CG sees class 3 (id 2 + 3), or "no class" when dropped.
    np.testing.assert_array_equal(prefix, [[0, 12], [1, 5], [1, 12]])
    with pytest.raises(ValueError, match=r"label 10 is outside \[0, config.num_classes=10\)"):
        commit_tokens.check_labels(np.array([1, 10]), setup)
    with pytest.raises(ValueError, match="'IPC' is not among the trained tasks"):
        setup.task_id("IPC")
    values = {"tasks/FP/examples": 0.0, "tasks/FP/loss": float("nan"), "tasks/CG/examples": 8.0}
    values.update({"tasks/CG/loss": 1.0, "refine/tokens": 0.0, "refine/loss": float("nan")})
    assert maskgit.drop_empty_groups(values) == {
        "tasks/FP/examples": 0.0,
        "tasks/CG/examples": 8.0,
        "tasks/CG/loss": 1.0,
        "refine/tokens": 0.0,
    }


def test_commit_loss_is_the_weighted_smoothed_cross_entropy():
    """Eq. 6.4 with only L_mask weighted (MaskGIT's loss): the mean smoothed cross-entropy of
    the [MASK] positions, a token's cross-entropy being the sum over its two factors."""
    setup = commit_tokens.CommitSetup(
        tasks=commit.make_tasks(["FP", "OPC"]),
        task_weights=(1.0, 1.0),
        num_classes=0,
        video_shape=(9, 16, 16),
        latent_shape=(1, 2, 2),
        temporal_factor=4,
        spatial_factor=8,
        causal=True,
        codebook_size=64,
        num_bits=6,
        num_factors=2,
    )
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 4, 2, 8)), jnp.float32)
    target = jnp.asarray(rng.integers(0, 8, (2, 4, 2)), jnp.int32)
    refine = jnp.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    mask = jnp.array([[0, 1, 1, 0], [1, 0, 0, 0]], bool)
    recons = ~(refine | mask)
    weights = mask.astype(jnp.float32)
    inputs = commit.CommitInputs(target, refine, mask, recons, weights)
    loss, metrics = maskgit.commit_loss(logits, target, inputs, jnp.array([0, 1]), setup, 0.1)
    labels = optax.smooth_labels(jax.nn.one_hot(target, 8), 0.1)
    ce = np.asarray(optax.softmax_cross_entropy(logits, labels).sum(-1))  # [2, 4]
    m = np.asarray(mask)
    np.testing.assert_allclose(loss, ce[m].mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["tasks/OPC/loss"], ce[1, 0], rtol=1e-6)
    np.testing.assert_allclose(metrics["refine/loss"], ce[0, 0], rtol=1e-6)
    assert (metrics["refine/tokens"], metrics["mask/tokens"], metrics["recons/tokens"]) == (1, 3, 4)
    right = np.all(np.argmax(logits, -1) == target, -1)
    masked = np.asarray(refine | mask)
    assert metrics["masked_accuracy"] == pytest.approx(right[masked].mean())


def test_vq_tokens_are_one_factor_and_non_causal():
    """MAGVIT's 3D-VQ: one softmax over the codebook, latent frame i covers frames 4i..4i+3."""
    tokenizer = nnx.eval_shape(
        lambda: VQVideoTokenizer(
            base_channels=4,
            channel_multipliers=(1, 2, 2),
            num_res_blocks=1,
            temporal_downsample=(True, True),
            codebook_size=16,
            embedding_dim=4,
            num_groups=2,
            rngs=nnx.Rngs(0),
        )
    )
    config = load_experiment("magvit_bair_mt8").get_config()
    configure(config, **{"data.num_frames": 16, "data.resolution": 16})
    setup = commit_tokens.make_setup(config, tokenizer)
    assert (setup.causal, setup.num_bits, setup.sub_vocab_size) == (False, None, 16)
    assert setup.latent_shape == (4, 4, 4) and setup.num_tokens == 64
    indices = jnp.arange(2 * 64).reshape(2, 4, 4, 4) % 16
    factors = commit_tokens.to_factors(indices, setup)
    assert factors.shape == (2, 64, 1)
    np.testing.assert_array_equal(commit_tokens.from_factors(factors, setup), indices)
    # FP conditions on frame 0, which the first latent frame (frames 0-3) covers.
    fp = np.asarray(commit_tokens.latent_region(setup, setup.tasks[setup.task_id("FP")]))
    assert fp[0].all() and not fp[1:].any()
    configure(config, **{"model.num_factors": 2})
    with pytest.raises(ValueError, match="only LFQ tokens can be factorized"):
        commit_tokens.make_setup(config, tokenizer)


def test_eval_and_sample_modes(tmp_path, tokenizer_workdir, capsys):
    """`--mode=eval` reports FVD, the copy-last-frame baseline's FVD and CG class accuracy;
    `--mode=sample` writes one condition | sample | ground-truth grid per task."""
    config = tiny_maskgit(
        "magvit2_k600_fp",
        "runlocal",
        tokenizer_workdir,
        num_classes=10,
        **{
            "tasks.names": ("FP", "CG"),
            "eval.tasks": ("FP", "CG"),
            "decoding.guidance_scale": 1.0,
            "eval.batch_size": 4,
            "eval.classifier_steps": 40,
            "eval.frechet.num_samples": 4,
            "eval.frechet.num_repeats": 1,
            "eval.frechet.num_frames": 9,
            "eval.frechet.resolution": 16,
        },
    )
    configure(config, **{"tasks.weights": (1.0, 1.0)})
    workdir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        videogen_main.run(config, workdir, mode="eval")
    assert videogen_main.run(config, workdir).step == 2

    metrics = videogen_main.run(config, workdir, mode="eval")
    fvd = {key: metrics[f"eval/{key}"] for key in ("FP/fvd", "CG/fvd", "FP/copy_last_frame_fvd")}
    assert all(value > 0 for value in fvd.values()) and len(set(fvd.values())) == 3, fvd
    assert metrics["eval/FP/fvd_num_samples"] == metrics["eval/FP/fvd_num_real"] == 4
    assert "eval/CG/copy_last_frame_fvd" not in metrics  # CG has no condition frames
    accuracy = metrics["eval/CG/class_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and accuracy * 8 == round(accuracy * 8)
    assert "eval/FP/class_accuracy" not in metrics  # FP samples carry no class
    report = json.loads((tmp_path / "eval_step0000002.json").read_text())
    assert report["eval/CG/class_accuracy"] == accuracy
    assert "eval/FP/copy_last_frame_fvd = " in capsys.readouterr().out

    paths = videogen_main.run(config, workdir, mode="sample")
    assert sorted(paths) == ["CG", "FP"]
    for task, files in paths.items():
        assert [os.path.basename(f) for f in files] == [
            f"{task}_sample_step0000002.gif",
            f"{task}_sample_step0000002.mp4",
        ]
        with Image.open(files[0]) as gif:
            # Three rows (condition, sample, ground truth) of 16-pixel clips, 2-pixel borders.
            assert gif.size == (4 * 16 + 5 * 2, 3 * 16 + 4 * 2)
        assert os.path.getsize(files[1]) > 0


def test_sample_mode_needs_a_generative_trainer(tmp_path):
    config = load_experiment("quickstart_tokenizer").get_config()
    with pytest.raises(ValueError, match="'tokenizer' does not generate samples"):
        videogen_main.run(config, str(tmp_path), mode="sample")


# --- token files (--mode=tokenize) ----------------------------------------------------------


def test_train_step_from_tokens_equals_the_step_from_videos(tmp_path, tokenizer_workdir):
    """The quickstart's tasks (FP from 1 frame, CG) take z̃ from z, so a step on the target's
    tokens is the step on the videos, bit for bit, with the tokenizer run beforehand."""
    config = tiny_maskgit(
        "quickstart_generator", None, tokenizer_workdir, **{"tokenize.before_training": False}
    )
    stage2 = maskgit.Stage2(config, str(tmp_path))
    run = loop.Run(config, str(tmp_path), stage2.trainer())
    graphdef, state, _, _ = run.create_or_restore_state()
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    step = jax.jit(
        functools.partial(
            maskgit.train_step, graphdef, stage2.tokenizer_graphdef, stage2.setup, config, schedule
        )
    )
    batch = next(run.train_iter)
    tokenizer = nnx.merge(stage2.tokenizer_graphdef, stage2.tokenizer_state)
    tokens = commit_tokens.to_factors(
        tokenizer.tokenize(frozen_tokenizer.to_float(jnp.asarray(batch["video"]))), stage2.setup
    )
    from_videos, m1 = step(state, stage2.tokenizer_state, dict(batch))
    from_tokens, m2 = step(
        state, stage2.tokenizer_state, {"tokens": tokens, "label": batch["label"]}
    )
    assert float(m1["loss"]) == float(m2["loss"])
    for x, y in zip(leaves(from_videos), leaves(from_tokens)):
        np.testing.assert_array_equal(x, y)


def test_tokenize_mode_writes_token_files_that_training_reads(tmp_path, tokenizer_workdir, capsys):
    extra = {"tokenize.num_examples": 20, "tokenize.batch_size": 8}
    config = tiny_maskgit("quickstart_generator", None, tokenizer_workdir, **extra)
    directory = videogen_main.run(config, str(tmp_path / "gen"), mode="tokenize")
    assert directory == str(tmp_path / "gen" / "tokens")
    assert "tokenized 20 clips" in capsys.readouterr().out
    source = token_files.TokenSource(directory)
    assert len(source) == 20 and source.meta["latent_shape"] == [3, 4, 4]
    example = source[0]
    assert example["tokens"].shape == (48, 2) and example["tokens"].dtype == np.int32
    assert 0 <= example["tokens"].min() and example["tokens"].max() < 8
    labels = np.array([source[i]["label"] for i in range(20)])
    assert set(labels) <= set(range(10)) and len(set(labels)) > 1

    configure(config, **{"data.token_dir": directory})
    result = maskgit.train_and_evaluate(config, str(tmp_path / "train"))
    assert result.step == 2 and np.isfinite(result.history[-1]["loss"])

    # Token files of another factorization, or tasks that tokenize their condition video,
    # are refused before training.
    other = tiny_maskgit(
        "quickstart_generator", None, tokenizer_workdir, **{"data.token_dir": directory}
    )
    configure(other, **{"model.num_factors": 1})
    with pytest.raises(ValueError, match="num_factors: files 2, run 1"):
        maskgit.Stage2(other, str(tmp_path / "other"))
    mt8 = tiny_maskgit("magvit_bair_mt8", None, tokenizer_workdir, **{"data.token_dir": directory})
    with pytest.raises(ValueError, match="condition video tokenized"):
        maskgit.Stage2(mt8, str(tmp_path / "mt8"))
    with pytest.raises(FileNotFoundError, match="--mode=tokenize"):
        token_files.TokenSource(str(tmp_path / "nothing"))


def test_before_training_tokenizes_once_and_trains_from_the_files(tmp_path, tokenizer_workdir):
    extra = {"tokenize.before_training": True, "num_train_steps": 2}
    config = tiny_maskgit("quickstart_generator", None, tokenizer_workdir, **extra)
    workdir = str(tmp_path / "gen")
    assert frozen_tokenizer.train_token_dir(config, workdir) == os.path.join(workdir, "tokens")
    assert maskgit.train_and_evaluate(config, workdir).step == 2
    source = token_files.TokenSource(os.path.join(workdir, "tokens"))
    assert len(source) == 16 and source.meta["tokenizer_workdir"] == tokenizer_workdir
    meta_written = os.stat(os.path.join(workdir, "tokens", token_files.META)).st_mtime_ns
    # A resumed run trains on from the same files; it does not tokenize again.
    configure(config, num_train_steps=3)
    assert maskgit.train_and_evaluate(config, workdir).step == 3
    assert os.stat(os.path.join(workdir, "tokens", token_files.META)).st_mtime_ns == meta_written
    # Without the flag and without data.token_dir, batches are tokenized on the fly.
    configure(config, **{"tokenize.before_training": False})
    assert frozen_tokenizer.train_token_dir(config, workdir) == ""
    # Tasks that tokenize their condition video are refused before any clip is encoded.
    mt8 = tiny_maskgit(
        "magvit_bair_mt8", None, tokenizer_workdir, **{"tokenize.before_training": True}
    )
    with pytest.raises(ValueError, match="condition video tokenized"):
        maskgit.train_and_evaluate(mt8, str(tmp_path / "mt8"))
    assert not token_files.exists(str(tmp_path / "mt8" / "tokens"))
