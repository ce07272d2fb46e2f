"""Config strings, locked configs and the documented config errors."""

import os
import subprocess
import sys

import ml_collections
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


def _tokenizer_config_of(config):
    """The tokenizer experiment config that `config.tokenizer_command` trains."""
    experiment, _, arg = config.tokenizer_command.split("--config=")[1].split()[0].partition(":")
    return config_lib.load_experiment(os.path.join(ROOT, experiment)).get_config(arg or None)


def test_bair_tokenizer_is_the_64x64_3dvq_and_its_sequence_is_1026():
    """Thesis 3.3.1 at 64x64 (VQVAE multipliers 1, 2, 4; discriminator 2, 4, 4, 4): a 16x64x64
    clip gives 4x16x16 tokens, and the BAIR transformer's sequence is 6.5.6's 1026 (task and
    class prompt + 1024 tokens). Shapes only: nothing is initialised or run."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from videogen.tasks import commit_tokens
    from videogen.trainers import frozen_tokenizer, maskgit, tokenizer

    bair = load_experiment("magvit_bair_mt8").get_config()
    vq = _tokenizer_config_of(bair)
    assert (vq.model_class, vq.data.num_frames, vq.data.resolution) == ("VQVideoTokenizer", 16, 64)
    assert tuple(vq.model.channel_multipliers) == (1, 2, 4)
    assert tuple(vq.discriminator.channel_multipliers) == (2, 4, 4, 4)
    assert (vq.model.base_channels, vq.batch_size, vq.eval.frechet.resolution) == (128, 256, 64)
    model = nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(vq))
    clip = jax.ShapeDtypeStruct((1, 16, 64, 64, 3), jnp.float32)
    tokens = nnx.eval_shape(lambda m, v: m.tokenize(v), model, clip)
    assert tokens.shape == (1, 4, 16, 16)
    logit = nnx.eval_shape(lambda: tokenizer.build_discriminator(vq)(jnp.zeros(clip.shape)))
    assert logit.shape == (1,)  # one real/fake logit per clip
    setup = commit_tokens.make_setup(bair, model)
    transformer = nnx.eval_shape(lambda: maskgit.build_model(bair, setup))
    assert commit_tokens.PREFIX_LENGTH + setup.num_tokens == 1026
    assert transformer.position_embedding.shape[0] == 1026


@pytest.mark.parametrize(
    ("name", "arg", "epochs", "dataset", "batch_size", "steps"),
    [
        # 5.4.1: the MAGVIT-v2 tokenizer, 190 epochs of K600 at batch 256.
        ("magvit2_k600", None, 190, "k600", 256, 285_000),
        # 5.4.2 / Table 6.10 (K600, L): the transformer, 360 epochs at batch 256.
        ("magvit2_k600_fp", None, 360, "k600", 256, 540_000),
        # Table 3.1: the 3D-VQ, B (batch 128) and L (batch 256) per dataset.
        ("magvit_3dvq", None, 45, "k600", 128, 135_000),
        ("magvit_3dvq", "size=L", 180, "k600", 256, 270_000),
        ("magvit_3dvq", "size=L,dataset=bair", 800, "bair", 256, 134_375),
        ("magvit_3dvq", "size=L,dataset=ucf101", 2000, "ucf101", 256, 74_219),
        # Table 6.10 (MAGVIT-L): UCF-101 2000 epochs, BAIR-MT 1600 epochs.
        ("magvit_ucf101_cg", None, 2000, "ucf101", 256, 74_219),
        ("magvit_bair_mt8", None, 1600, "bair", 256, 268_750),
    ],
)
def test_training_lengths_are_the_thesis_epochs(name, arg, epochs, dataset, batch_size, steps):
    c = load_experiment(name).get_config(arg)
    assert c.batch_size == batch_size
    assert c.num_train_steps == config_lib.steps_for_epochs(epochs, dataset, batch_size) == steps


def test_steps_for_epochs_counts_the_thesis_training_videos():
    # 6.5.6: 384K K600, 9.5K UCF-101, 43K BAIR, 169K SSv2 training videos.
    assert config_lib.steps_for_epochs(1, "k600", 384) == 1000
    assert config_lib.steps_for_epochs(2, "ucf101", 1000) == 19
    assert config_lib.steps_for_epochs(1, "bair", 43) == 1000
    assert config_lib.steps_for_epochs(1, "ssv2", 169) == 1000
    with pytest.raises(ValueError, match="'imagenet'.*TRAIN_VIDEOS"):
        config_lib.steps_for_epochs(1, "imagenet", 256)


def test_transformer_sizes_come_from_the_table_or_explicit_keys():
    table = {"B": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072}}
    unset = dict(hidden_size=None, num_layers=None, num_heads=None, mlp_dim=None)
    model = ml_collections.ConfigDict(dict(size="B", **unset))
    assert config_lib.transformer_sizes(model, table, "Table 6.1") == table["B"]
    model.size = "XL"
    with pytest.raises(ValueError, match=r"size='XL'; use one of \['B'\] \(Table 6.1\)"):
        config_lib.transformer_sizes(model, table, "Table 6.1")
    model.size, model.hidden_size = "B", 64
    with pytest.raises(ValueError, match="both set"):
        config_lib.transformer_sizes(model, table, "Table 6.1")
    model.size = ""
    with pytest.raises(ValueError, match="needs positive explicit sizes"):
        config_lib.transformer_sizes(model, table, "Table 6.1")
    model.update(num_layers=2, num_heads=2, mlp_dim=128)
    assert config_lib.transformer_sizes(model, table, "Table 6.1")["mlp_dim"] == 128
