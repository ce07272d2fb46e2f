"""The pipeline trainer: stages in order, "@stage" references, finished stages skipped."""

import os

import ml_collections
import pytest

from videogen import main as videogen_main
from videogen.trainers import pipeline
from test_config import load_experiment
from test_tokenizer_trainer import tiny

NO_GAN = {"loss.generator_adversarial_weight": 0.0, "loss.perceptual_weight": 0.0}


def tiny_quickstart():
    config = load_experiment("quickstart").get_config()
    config.unlock()
    overrides = {"image_tokenizer": {**NO_GAN, "data.num_frames": 1}, "tokenizer": NO_GAN}
    for name, extra in overrides.items():
        config.stages[name] = tiny(config.stages[name], **{"eval.at_end": True, **extra})
    return config


def test_quickstart_stages_run_in_order_and_finished_stages_are_skipped(tmp_path, capsys):
    config = tiny_quickstart()
    assert config.stages.tokenizer.init.image_workdir == "@image_tokenizer"
    results = videogen_main.run(config, str(tmp_path))
    assert list(results) == ["image_tokenizer", "tokenizer"]
    assert 0 < results["tokenizer"]["eval/moving_digits/psnr"] < 100
    for stage in ("image_tokenizer", "tokenizer"):
        assert os.path.exists(tmp_path / stage / "eval_step0000002.json")
    assert "Initialised the tokenizer" not in capsys.readouterr().out  # logged, not printed
    checkpoint = tmp_path / "tokenizer" / "checkpoints" / "2"
    written = checkpoint.stat().st_mtime_ns
    again = videogen_main.run(config, str(tmp_path))
    assert "stage tokenizer already complete" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == written
    assert again["tokenizer"] == pytest.approx(results["tokenizer"])


def test_references_must_name_an_earlier_stage(tmp_path):
    stage = ml_collections.ConfigDict({"init": {"image_workdir": "@tokenizer"}})
    with pytest.raises(ValueError, match="names stage 'tokenizer', which does not run before"):
        pipeline.resolve_references(stage, str(tmp_path), done=["image_tokenizer"])
    resolved = pipeline.resolve_references(stage, str(tmp_path), done=["tokenizer"])
    assert resolved.init.image_workdir == os.path.join(str(tmp_path), "tokenizer")
