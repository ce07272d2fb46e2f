"""The stages trainer: stages in order, "@stage" references, finished stages skipped, a stopped
stage ends the run."""

import os

import ml_collections
import pytest

from videogen import main as videogen_main
from videogen.trainers import stages
from tiny_configs import MASKGIT_TINY, configure, load_experiment, tiny

NO_GAN = {"loss.generator_adversarial_weight": 0.0, "loss.perceptual_weight": 0.0}


def tiny_quickstart():
    config = load_experiment("quickstart").get_config()
    config.unlock()
    overrides = {"image_tokenizer": {**NO_GAN, "data.num_frames": 1}, "tokenizer": NO_GAN}
    for name, extra in overrides.items():
        config.stages[name] = tiny(config.stages[name], **{"eval.at_end": True, **extra})
    # A 2-step digit classifier: the class-accuracy path runs, its value is not tested here.
    configure(
        config.stages.generator,
        **{**MASKGIT_TINY, "eval.at_end": True, "eval.classifier_steps": 2},
    )
    return config


def test_quickstart_stages_run_in_order_and_finished_stages_are_skipped(tmp_path, capsys):
    config = tiny_quickstart()
    assert config.stages.tokenizer.init.image_workdir == "@image_tokenizer"
    assert config.stages.generator.tokenizer_workdir == "@tokenizer"
    # A stage stopped early (as on SIGTERM) ends the run: no later stage reads it unfinished.
    stopped = stages.train_and_evaluate(config, str(tmp_path), stop_at_step=1)
    assert list(stopped) == ["image_tokenizer"]
    assert "stage image_tokenizer stopped at step 1 of 2" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "tokenizer")
    results = videogen_main.run(config, str(tmp_path))  # resumes the image stage at step 1
    assert list(results) == ["image_tokenizer", "tokenizer", "generator"]
    assert 0 < results["tokenizer"]["eval/moving_digits/psnr"] < 100
    assert 0 <= results["generator"]["eval/CG/class_accuracy"] <= 1
    for stage in ("image_tokenizer", "tokenizer", "generator"):
        assert os.path.exists(tmp_path / stage / "eval_step0000002.json")
    for task in ("FP", "CG"):  # one condition | sample | ground truth grid per task
        assert os.path.exists(tmp_path / "generator" / "samples" / f"{task}_step0000002.gif")
    assert "Initialised the tokenizer" not in capsys.readouterr().out  # logged, not printed
    checkpoints = [tmp_path / stage / "checkpoints" / "2" for stage in ("tokenizer", "generator")]
    written = [c.stat().st_mtime_ns for c in checkpoints]
    again = videogen_main.run(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "stage tokenizer already complete" in out and "stage generator already complete" in out
    assert [c.stat().st_mtime_ns for c in checkpoints] == written
    for stage in results:
        assert again[stage] == pytest.approx(results[stage])


def test_references_must_name_an_earlier_stage(tmp_path):
    stage = ml_collections.ConfigDict({"init": {"image_workdir": "@tokenizer"}})
    with pytest.raises(ValueError, match="names stage 'tokenizer', which does not run before"):
        stages.resolve_references(stage, str(tmp_path), done=["image_tokenizer"])
    resolved = stages.resolve_references(stage, str(tmp_path), done=["tokenizer"])
    assert resolved.init.image_workdir == os.path.join(str(tmp_path), "tokenizer")
