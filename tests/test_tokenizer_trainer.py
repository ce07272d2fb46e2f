"""The tokenizer trainer end to end on tiny configs: resume, sharding, configs, errors."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
from flax import nnx
import numpy as np
import pytest

from videogen import main as videogen_main
from videogen.trainers import loop
from videogen.trainers import frozen_tokenizer
from videogen.trainers import tokenizer as trainer
from tiny_configs import ROOT, TINY_OVERRIDES, load_experiment, tiny


def params_of(state):
    return jax.tree.leaves(jax.device_get(nnx.to_pure_dict(state)))


@pytest.mark.parametrize(
    "name,arg,extra",
    [
        # quickstart_tokenizer itself: test_eval_mode_reports_the_checkpoint_metrics (9 frames).
        ("quickstart_tokenizer", "image=true", {"data.num_frames": 1}),
        ("magvit2_k600", "runlocal", {}),
        ("magvit2_k600", None, {}),
        # The 3D-VQ's tiny twin: non-causal, so 4 frames (two 2x temporal poolings).
        ("magvit_3dvq", "runlocal", {"data.num_frames": 4, "model.embedding_dim": 8}),
    ],
)
def test_every_experiment_builds_and_runs_two_steps(tmp_path, name, arg, extra):
    config = tiny(load_experiment(name).get_config(arg), **{"eval.at_end": True, **extra})
    result = videogen_main.run(config, str(tmp_path))
    assert result.step == 2
    assert np.isfinite(result.train_metrics["loss"])
    assert 0.0 < result.eval_metrics["eval/moving_digits/psnr"] < 100.0
    assert glob.glob(str(tmp_path / "samples" / "moving_digits_step0000002.gif"))
    assert glob.glob(str(tmp_path / "eval_step0000002.json"))


def test_resume_equals_uninterrupted(tmp_path):
    """4 steps straight == 2 steps, restart from the checkpoint, 2 more steps."""
    config = tiny(load_experiment("quickstart_tokenizer").get_config(), num_train_steps=4)
    straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))
    first = trainer.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=2)
    assert first.step == 2
    resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed.step == 4
    a, b = params_of(straight.state), params_of(resumed.state)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert straight.train_metrics["loss"] == resumed.train_metrics["loss"]
    # A later stage loads the EMA model alone (a partial restore) and gets exactly it.
    loaded, _ = frozen_tokenizer.load_tokenizer(str(tmp_path / "straight"))
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded)))
    ema = jax.tree.leaves(nnx.to_pure_dict(straight.state["ema_model"]))
    online = jax.tree.leaves(nnx.to_pure_dict(straight.state["model"]))
    assert len(got) == len(ema) == len(online) > 10
    for x, y in zip(got, ema):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(got, online))


def test_sharded_equals_unsharded(tmp_path):
    """3 steps on a 2x2x2 mesh of 8 CPU devices == 3 steps on 1 device.

    The runs are those of the resume test (4 steps planned, so the same compiled program)
    stopped after 3."""
    assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
    results = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        config = tiny(
            load_experiment("quickstart_tokenizer").get_config(),
            num_train_steps=4,
            **{"mesh.shape": shape},
        )
        results[shape] = trainer.train_and_evaluate(
            config, str(tmp_path / str(shape)), stop_at_step=3
        )
    one, eight = results[(1, 1, 1)], results[(2, 2, 2)]
    losses = lambda r: [h["loss"] for h in r.history]
    assert len(losses(one)) == 3
    np.testing.assert_allclose(losses(one), losses(eight), rtol=1e-5)
    sharded_leaves = [x for x in jax.tree.leaves(eight.state) if len(x.sharding.device_set) == 8]
    assert sharded_leaves, "state must live on all 8 devices"
    assert any(not x.sharding.is_fully_replicated for x in sharded_leaves), (
        "fsdp must split some parameter"
    )
    # Parameters are not compared element-wise: Adam with b1=0 turns a gradient
    # entry near zero into a +-lr step whose sign float rounding may flip.


def test_k600_without_data_names_the_path_and_runlocal(tmp_path):
    config = load_experiment("magvit2_k600").get_config()
    config.data.path = str(tmp_path / "no_kinetics_here")
    with pytest.raises(ValueError) as info:
        videogen_main.run(config, str(tmp_path / "work"))
    assert "no_kinetics_here" in str(info.value)
    assert "magvit2_k600.py:runlocal" in str(info.value)


def test_nan_metric_stops_with_step_and_name():
    with pytest.raises(FloatingPointError, match=r"'reconstruction_loss' is nan at step 7"):
        loop.check_finite({"loss": 1.0, "reconstruction_loss": float("nan")}, 7)


def test_unknown_trainer_is_an_error(tmp_path):
    config = load_experiment("quickstart_tokenizer").get_config()
    config.trainer = "tokeniser"
    with pytest.raises(ValueError, match="'tokeniser'.*available: .*'tokenizer'"):
        videogen_main.run(config, str(tmp_path))


def _cli(workdir, steps):
    flags = [
        f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in TINY_OVERRIDES.items()
        # None (unset) is the experiment's own value of these keys, and has no flag syntax.
        if k not in ("num_train_steps", "data.path", "eval.path", "data.missing_hint")
        and v is not None
    ]
    return [
        sys.executable,
        "-m",
        "videogen.main",
        "--config=experiments/quickstart_tokenizer.py",
        f"--workdir={workdir}",
        f"--config.num_train_steps={steps}",
        *flags,
        # Signals and restarts are the subject, not the losses: the step without GAN and
        # LPIPS compiles ~2.7x faster, and each of the test's 3 processes compiles it.
        "--config.loss.generator_adversarial_weight=0.0",
        "--config.loss.perceptual_weight=0.0",
    ]


def _latest_step(workdir):
    steps = [
        int(os.path.basename(p))
        for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
        if os.path.basename(p).isdigit()
    ]
    return max(steps, default=None)


def _start(workdir, steps):
    return subprocess.Popen(
        _cli(workdir, steps),
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint_after(proc, workdir, step):
    deadline = time.time() + 240
    while (_latest_step(workdir) or 0) <= step and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (_latest_step(workdir) or 0) > step, proc.communicate()[0][-3000:]


def test_sigterm_and_sigkill_resume_without_losing_steps(tmp_path):
    """SIGTERM: clean exit after saving. SIGKILL: the last complete checkpoint survives.

    Each restart continues from the step it stopped at.
    """
    workdir = str(tmp_path / "run")
    proc = _start(workdir, 10_000)
    _wait_for_checkpoint_after(proc, workdir, 0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    stopped = _latest_step(workdir)
    assert 2 <= stopped < 10_000
    assert "signal 15" in out and f"Stopped at step {stopped}" in out

    proc = _start(workdir, 10_000)
    _wait_for_checkpoint_after(proc, workdir, stopped)
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    assert f"at step {stopped}" in out
    killed = _latest_step(workdir)
    assert killed > stopped

    restart = subprocess.run(
        _cli(workdir, killed + 2),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"at step {killed}" in restart.stderr
    assert _latest_step(workdir) == killed + 2


def test_eval_mode_reports_the_checkpoint_metrics(tmp_path, capsys):
    """`--mode=eval` restores the latest checkpoint and reports PSNR/SSIM/LPIPS and rFVD.

    rFVD runs 2 folds of 4 clips (I3D needs 9 frames); the real statistics are
    computed by the first evaluation and reused by the second.
    """
    config = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **{
            # The train step without GAN and LPIPS compiles 2.5x faster; the evaluation,
            # the subject here, is the same (test_tokenizer_gan trains the full recipe).
            "loss.generator_adversarial_weight": 0.0,
            "loss.perceptual_weight": 0.0,
            "data.num_frames": 9,
            "eval.frechet.num_samples": 4,
            "eval.frechet.num_repeats": 2,
            "eval.frechet.num_frames": 9,
            "eval.frechet.resolution": 16,
        },
    )
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        videogen_main.run(config, str(tmp_path), mode="eval")
    trained = videogen_main.run(config, str(tmp_path))
    assert trained.step == 2 and np.isfinite(trained.train_metrics["loss"])
    metrics = videogen_main.run(config, str(tmp_path), mode="eval")
    assert glob.glob(str(tmp_path / "samples" / "moving_digits_step0000002.gif"))
    assert 0.0 < metrics["eval/moving_digits/psnr"] < 100.0
    assert 0.0 < metrics["eval/moving_digits/lpips"] < 1.0
    folds = [metrics[f"eval/moving_digits/rfvd_repeat{r}"] for r in range(2)]
    assert all(f > 0 for f in folds) and folds[0] != folds[1]
    assert metrics["eval/moving_digits/rfvd"] == pytest.approx(np.mean(folds))
    assert metrics["eval/moving_digits/rfvd_std"] == pytest.approx(np.std(folds))
    assert "eval/moving_digits/psnr = " in capsys.readouterr().out
    (stats_file,) = (tmp_path / "real_stats").glob("moving_digits_eval_i3d_*.npz")
    written = stats_file.stat().st_mtime_ns
    again = videogen_main.run(config, str(tmp_path), mode="eval")
    assert stats_file.stat().st_mtime_ns == written
    assert again["eval/moving_digits/rfvd"] == pytest.approx(metrics["eval/moving_digits/rfvd"])
    report = json.loads((tmp_path / "eval_step0000002.json").read_text())
    assert report["eval/moving_digits/rfvd"] == pytest.approx(metrics["eval/moving_digits/rfvd"])


def test_per_source_psnr_is_the_mean_of_each_sources_clips():
    """The evaluator's line per real source: its clips' mean PSNR, the baseline's, the gain."""
    metrics = trainer.per_source_psnr(
        "real_clips", ["coffee", "china", "coffee"], [20.0, 30.0, 24.0], [19.0, 31.0, 19.0]
    )
    assert metrics == pytest.approx(
        {
            "eval/real_clips/china/psnr": 30.0,
            "eval/real_clips/china/baseline_psnr": 31.0,
            "eval/real_clips/china/psnr_gain_over_baseline": -1.0,
            "eval/real_clips/coffee/psnr": 22.0,
            "eval/real_clips/coffee/baseline_psnr": 19.0,
            "eval/real_clips/coffee/psnr_gain_over_baseline": 3.0,
        }
    )
    with pytest.raises(ValueError, match="3 source keys for 2 PSNRs"):
        trainer.per_source_psnr("real_clips", ["a", "b", "c"], [1.0, 2.0], [1.0, 2.0])
