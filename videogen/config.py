"""Config-string parsing and the config pieces every experiment shares.

An experiment is a Python file under `experiments/` with `get_config(arg)`;
`arg` is the text after the colon in `--config=experiments/x.py:runlocal,steps=5`
and is parsed by `parse_arg`. Returned configs are locked, so assigning an
unknown key (a typo in a file or on the command line) raises.
"""

from __future__ import annotations

import ml_collections

from videogen.evaluation import evaluator


def _convert(value: str, default):
    """Converts `value` to the type of `default` (bool, int, float or str)."""
    if isinstance(default, bool):
        lowered = value.lower()
        if lowered in ("1", "true", "yes", ""):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise ValueError(f"Config argument expects a bool, got {value!r}: use true or false.")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"runlocal,variant=B,steps=10"` into a ConfigDict over `defaults`.

    A bare name sets a bool default to True. Unknown names are an error that
    lists the accepted ones.
    """
    result = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in defaults:
            raise ValueError(
                f"Unknown config argument {name!r} in {arg!r}; accepted: {sorted(defaults)}."
            )
        if "=" not in item and not isinstance(defaults[name], bool):
            raise ValueError(f"Config argument {name!r} needs a value, e.g. {name}=...")
        result[name] = _convert(value, defaults[name])
    return result


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh shape over axes ("data", "fsdp", "tensor"); -1 takes the remaining devices."""
    return ml_collections.ConfigDict({"shape": (data, fsdp, tensor)})


# Logical parameter axes -> mesh axes. Parameters name their axes (see
# videogen/models/layers.py); this table decides how they are split. Output
# channels shard over fsdp (ZeRO-3 style), everything else is replicated.
DEFAULT_SHARDING_RULES = (
    ("channels_out", "fsdp"),
    ("channels_in", None),
    ("channels", None),
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("codebook", "fsdp"),
    # Transformers (videogen/models/transformer.py): FSDP over the model width,
    # tensor parallelism over heads, MLP hidden units and the vocabulary.
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("prefix_vocab", None),
    ("positions", None),
    ("factors", None),
    ("norm", None),
)


def tokenizer_config() -> ml_collections.ConfigDict:
    """The MAGVIT-v2 Kinetics-600 tokenizer recipe (thesis 5.4.1); experiments adjust it.

    Entries marked "not in the thesis" are our choices where 5.4.1 is silent.
    """
    c = ml_collections.ConfigDict()
    c.trainer = "tokenizer"
    c.seed = 0
    c.model_class = "CausalVideoTokenizer"
    c.model = ml_collections.ConfigDict(
        dict(
            base_channels=128,
            channel_multipliers=(1, 2, 2, 4),
            num_res_blocks=4,
            # 17 frames -> 5 latent frames; temporal down-sampling in the last blocks.
            temporal_downsample=(False, True, True),
            num_bits=18,  # vocabulary 2^18
            num_groups=32,
            entropy_temperature=0.01,  # not in the thesis
            entropy_groups=1,  # exact codebook entropy over all 2^18 codes
            remat=False,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            name="video_folder",
            path="",
            num_frames=17,
            frame_stride=1,
            resolution=128,
            worker_count=0,
            # Appended to a "data not found" error: where the data must be, and what to run instead.
            missing_hint="",
        )
    )
    c.batch_size = 256
    c.num_train_steps = 500_000  # not in the thesis
    c.loss = ml_collections.ConfigDict(
        dict(
            reconstruction_weight=5.0,
            commitment_weight=0.25,
            entropy_weight=0.1,
            entropy_anneal_steps=2000,
            entropy_anneal_factor=3.0,
            codebook_weight=1.0,  # VQ only (the MAGVIT 3D-VQ); LFQ has no codebook loss
            generator_loss_type="non_saturating",
            generator_adversarial_weight=0.1,  # 0 turns the GAN off: no discriminator is built
            adversarial_start_step=0,  # generator and discriminator losses start here
            discriminator_r1_cost=10.0,
            perceptual_weight=0.1,  # LPIPS-VGG16 per frame; 0 turns it off
            lecam_weight=0.001,
            lecam_ema_decay=0.999,  # not in the thesis (LeCAM paper's default)
        )
    )
    # 3D StyleGAN discriminator, trained from scratch; the clip shape comes from `data`.
    c.discriminator = ml_collections.ConfigDict(
        dict(base_channels=128, channel_multipliers=(2, 4, 4, 4, 4))
    )
    c.optimizer = ml_collections.ConfigDict(
        dict(
            peak_lr=1e-4,
            warmup_steps=5000,  # not in the thesis
            end_lr_fraction=0.0,
            b1=0.0,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip_norm=0.0,
        )
    )
    # The discriminator's Adam: the generator's settings (the thesis names one optimizer).
    c.discriminator_optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())
    c.ema_decay = 0.999
    c.mesh = mesh_config()
    c.sharding_rules = DEFAULT_SHARDING_RULES
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.log_every_steps = 50
    c.eval = ml_collections.ConfigDict(
        dict(
            datasets="video_folder",
            # Folder/data_dir of the held-out split when it differs from data.path.
            path="",
            num_examples=1024,
            batch_size=32,
            every_steps=10_000,
            at_end=True,
            grid_examples=8,
            fps=8,
        )
    )
    # rFVD of the reconstructions of all held-out clips (one fold), at the clip size.
    c.eval.frechet = evaluator.protocol_config(
        "", network="i3d", num_samples=1024, num_repeats=1, num_frames=17, resolution=128
    )
    return c
