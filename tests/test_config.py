"""Config strings, locked configs and the documented config errors."""

import os
import subprocess
import sys

import pytest

from videogen import config as config_lib
from tiny_configs import ROOT, load_experiment


def test_parse_arg_types_and_flags():
    args = config_lib.parse_arg(
        "runlocal,steps=7,lr=0.5,name=b", runlocal=False, steps=1, lr=1.0, name="a"
    )
    assert (args.runlocal, args.steps, args.lr, args.name) == (True, 7, 0.5, "b")
    assert isinstance(args.steps, int) and isinstance(args.lr, float)


def test_parse_arg_unknown_name_lists_accepted():
    with pytest.raises(ValueError, match=r"'stesp'.*accepted: \['steps'\]"):
        config_lib.parse_arg("stesp=3", steps=1)


def test_k600_config_is_the_thesis_recipe():
    c = load_experiment("magvit2_k600").get_config()
    assert (c.data.num_frames, c.data.frame_stride, c.data.resolution) == (17, 1, 128)
    assert (c.model.base_channels, tuple(c.model.channel_multipliers), c.model.num_res_blocks) == (
        128,
        (1, 2, 2, 4),
        4,
    )
    assert c.model.num_bits == 18 and c.batch_size == 256 and c.ema_decay == 0.999
    assert (c.loss.entropy_weight, c.loss.entropy_anneal_steps, c.loss.entropy_anneal_factor) == (
        0.1,
        2000,
        3.0,
    )
    assert (c.loss.reconstruction_weight, c.loss.commitment_weight) == (5.0, 0.25)
    assert (c.loss.generator_adversarial_weight, c.loss.discriminator_r1_cost) == (0.1, 10.0)
    assert (c.loss.perceptual_weight, c.loss.lecam_weight) == (0.1, 0.001)
    assert c.loss.generator_loss_type == "non_saturating"
    assert (c.optimizer.peak_lr, c.optimizer.b1, c.optimizer.b2) == (1e-4, 0.0, 0.99)


def test_locked_config_rejects_typos():
    c = load_experiment("quickstart_tokenizer").get_config()
    with pytest.raises(AttributeError):
        c.datset = "moving_digits"
    with pytest.raises(AttributeError):
        c.data.resolutoin = 64


def test_command_line_unknown_key_is_an_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "videogen.main",
            "--config=experiments/quickstart_tokenizer.py",
            f"--workdir={tmp_path}",
            "--config.data.resolutoin=64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode != 0
    assert "resolutoin" in proc.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_load_experiment_loads_by_path_and_names_a_missing_file(tmp_path):
    module = config_lib.load_experiment(os.path.join(ROOT, "experiments", "quickstart.py"))
    assert module.get_config().stage_order[-1] == "generator"
    with pytest.raises(FileNotFoundError, match="no_such_experiment.py"):
        config_lib.load_experiment(tmp_path / "no_such_experiment.py")


def test_loading_any_experiment_imports_neither_jax_nor_the_evaluation_networks():
    """Configs are plain data: every experiment (and its variants) loads without JAX, Flax,
    TensorFlow or a feature network, as `config.load_experiment` does for the entry point."""
    code = """
import glob, os, sys
from videogen import config
variants = {"magvit2_k600": ["runlocal"], "magvit_3dvq": ["runlocal", "size=L"],
            "magvit2_k600_fp": ["runlocal"], "magvit_ucf101_cg": ["runlocal"],
            "magvit_bair_mt8": ["runlocal"], "quickstart_tokenizer": ["image=true"]}
paths = sorted(glob.glob("experiments/*.py"))
assert len(paths) >= 8, paths
for path in paths:
    name = os.path.splitext(os.path.basename(path))[0]
    module = config.load_experiment(path)
    for arg in [None] + variants.get(name, []):
        module.get_config(arg)
heavy = [m for m in ("jax", "flax", "tensorflow", "videogen.evaluation.evaluator",
                     "videogen.evaluation.i3d") if m in sys.modules]
assert not heavy, heavy
print(len(paths))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 8
