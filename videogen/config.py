"""Config-string parsing and the config pieces every experiment shares.

An experiment is a Python file under `experiments/` with `get_config(arg)`;
`arg` is the text after the colon in `--config=experiments/x.py:runlocal,steps=5`
and is parsed by `parse_arg`. Returned configs are locked, so assigning an
unknown key (a typo in a file or on the command line) raises.
"""

from __future__ import annotations

import importlib.util
import os
import types
from collections.abc import Mapping

import ml_collections

from videogen.evaluation import protocols


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


def load_experiment(path: str | os.PathLike) -> types.ModuleType:
    """The experiment module in the file `path` (it defines ``get_config(arg)``), loaded
    as ``--config=<path>`` loads it; for configs built from other experiment files, tests
    and benchmarks."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no experiment file {path!r}; experiments live in experiments/.")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def optional(value, field_type: type | None = None) -> ml_collections.FieldReference:
    """A config field that may be None ("unset", with the meaning its comment gives) and keeps
    its type, so `--config.x=<number>` still parses after the field was set to None."""
    return ml_collections.FieldReference(
        value, field_type=field_type if field_type is not None else type(value)
    )


def adam_config(
    *,
    peak_lr: float,
    warmup_steps: int,
    b1: float,
    b2: float,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
) -> ml_collections.ConfigDict:
    """An `optimizer` block: Adam(W), linear warm-up then cosine decay to `end_lr_fraction`."""
    return ml_collections.ConfigDict(
        dict(
            peak_lr=peak_lr,
            warmup_steps=warmup_steps,
            end_lr_fraction=0.0,
            b1=b1,
            b2=b2,
            eps=1e-8,
            weight_decay=weight_decay,
            grad_clip_norm=optional(grad_clip_norm, float),  # None: no clipping
        )
    )


def transformer_sizes(
    model: ml_collections.ConfigDict, table: Mapping[str, Mapping[str, int]], source: str
) -> dict[str, int]:
    """hidden_size, num_layers, num_heads, mlp_dim of `model`: `table[model.size]`, or the
    explicit sizes when size is ''. `source` names the table in errors (e.g. "Table 6.1")."""
    explicit = {k: model[k] for k in ("hidden_size", "num_layers", "num_heads", "mlp_dim")}
    if model.size:
        if model.size not in table:
            raise ValueError(
                f"config.model.size={model.size!r}; use one of {sorted(table)} ({source}) or '' "
                "with explicit hidden_size/num_layers/num_heads/mlp_dim."
            )
        if any(v is not None for v in explicit.values()):
            raise ValueError(
                f"config.model.size={model.size!r} and explicit sizes {explicit} are both set; "
                "set size='' to use the explicit sizes, or unset them (None)."
            )
        return dict(table[model.size])
    if not all(v is not None and v > 0 for v in explicit.values()):
        raise ValueError(
            f"config.model.size='' needs positive explicit sizes, got {explicit}; or set size "
            f"to one of {sorted(table)}."
        )
    return explicit


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh shape over axes ("data", "fsdp", "tensor"); -1 takes the remaining devices."""
    return ml_collections.ConfigDict({"shape": (data, fsdp, tensor)})


# Training videos per dataset as the thesis counts them (6.5.6; "384K" for Kinetics-600,
# "9.5K" for UCF-101, "43K" for BAIR, "169K" for SSv2): an epoch, the unit of its training
# lengths (Tables 3.1 and 6.10, 5.4.1, 5.4.2), is one clip of each.
TRAIN_VIDEOS = {"k600": 384_000, "ucf101": 9_500, "bair": 43_000, "ssv2": 169_000}


def steps_for_epochs(epochs: float, dataset: str, batch_size: int) -> int:
    """Training steps for `epochs` passes over `dataset`'s training videos at `batch_size`
    (nearest step). The steps do not follow a later change of the batch size."""
    if dataset not in TRAIN_VIDEOS:
        raise ValueError(
            f"no training-set size for dataset {dataset!r}; known: {sorted(TRAIN_VIDEOS)}. "
            "Add its video count, with its source, to config.TRAIN_VIDEOS."
        )
    return round(epochs * TRAIN_VIDEOS[dataset] / batch_size)


def data_config() -> ml_collections.ConfigDict:
    """The `data` block: a dataset spec (videogen/data/sources.py) and the clip shape,
    17 x 128 x 128 as in the thesis' Kinetics-600 set-ups."""
    return ml_collections.ConfigDict(
        dict(
            name="video_folder",
            path="",  # the folder of video_folder, or the data_dir of tfds:<name>
            num_frames=17,
            frame_stride=1,
            resolution=128,
            worker_count=0,
            # Video files shorter than a clip (a still renamed .mp4 decodes as 1 frame):
            # "pad" repeats their last frame, "skip" leaves them out. Counted either way
            # (data/short_files in the training metrics).
            short_files="pad",
            # Train clips only (videogen/data/transforms.py `augment`): mirror images, a
            # zoom-in by up to max_zoom, the colour channels in a random order, white
            # balance and saturation changed by up to a factor 1 + colour_jitter; `datasets`
            # names the parts of a "+" mixture augmented (all when empty): colour-jittered
            # digits cost the quickstart's generator its margins (BUILD_NOTES.md).
            augment=ml_collections.ConfigDict(
                dict(
                    flip=False,
                    max_zoom=1.0,
                    permute_channels=False,
                    colour_jitter=0.0,
                    datasets=(),
                )
            ),
            # Appended to a "data not found" error: where the data must be, and what to run instead.
            missing_hint="",
        )
    )


def add_run_settings(c: ml_collections.ConfigDict) -> None:
    """The settings every run has: mesh and sharding preset, checkpoints, log interval,
    precision."""
    c.mesh = mesh_config()
    # How parameters and activations split over the mesh: "data_parallel", "fsdp" or
    # "fsdp_tensor" (videogen/sharding.py PRESETS). "fsdp_tensor" uses whatever fsdp and
    # tensor axes config.mesh has, so on the default (-1, 1, 1) mesh it is data parallel.
    c.sharding = "fsdp_tensor"
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.log_every_steps = 50
    # Computation dtype of the trained models: "float32", or "bfloat16" with float32
    # parameters, optimizer state and EMA, losses and softmax (videogen/precision.py).
    c.precision = "float32"


def reconstruction_eval_config(
    datasets: tuple[str, ...], *, num_examples: int, grid_examples: int
) -> ml_collections.ConfigDict:
    """The `eval` block of a tokenizer (video or audio): held-out reconstructions of each
    dataset spec in `datasets`, every 10,000 steps and at the end, `grid_examples` of them
    written to samples/."""
    return ml_collections.ConfigDict(
        dict(
            datasets=datasets,  # dataset specs (videogen/data/sources.py), each on its own
            # Folder/data_dir of the held-out split when it differs from data.path.
            path="",
            num_examples=num_examples,
            batch_size=32,
            every_steps=optional(10_000),  # None: evaluate only at the end
            at_end=True,
            grid_examples=grid_examples,
            fps=8,
        )
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
            temporal_kernel_size=3,  # 1 builds the image (T=1) model that is later inflated
            adaptive_norm_out=False,  # not in the thesis: the decoder's last norm also adaptive
            remat=False,
        )
    )
    # Image-to-video inflation (thesis 5.4.2): a fresh run starts from the EMA
    # tokenizer of an image run (same model, temporal_kernel_size=1, 1-frame data).
    # "auto": the temporally last slice for the causal tokenizer, central for the 3D-VQ.
    c.init = ml_collections.ConfigDict(dict(image_workdir="", inflation="auto"))
    c.data = data_config()
    c.batch_size = 256
    c.num_train_steps = steps_for_epochs(190, "k600", c.batch_size)  # 5.4.1: 285,000 steps
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
            # None: every frame (thesis); n: n random frames per clip.
            perceptual_frames_per_clip=optional(None, int),
            # None: every clip of the batch (thesis); n: n random clips of it.
            perceptual_clips_per_batch=optional(None, int),
            lecam_weight=0.001,
            lecam_ema_decay=0.999,  # not in the thesis (LeCAM paper's default)
        )
    )
    # 3D StyleGAN discriminator, trained from scratch; the clip shape comes from `data`.
    c.discriminator = ml_collections.ConfigDict(
        dict(base_channels=128, channel_multipliers=(2, 4, 4, 4, 4))
    )
    c.optimizer = adam_config(peak_lr=1e-4, warmup_steps=5000, b1=0.0, b2=0.99)  # warm-up: ours
    # The discriminator's Adam: the generator's settings (the thesis names one optimizer).
    c.discriminator_optimizer = adam_config(peak_lr=1e-4, warmup_steps=5000, b1=0.0, b2=0.99)
    c.ema_decay = 0.999
    add_run_settings(c)
    c.eval = reconstruction_eval_config(("video_folder",), num_examples=1024, grid_examples=8)
    # rFVD of the reconstructions of all held-out clips (one fold), at the clip size.
    c.eval.frechet = clip_frechet(c, "", network="i3d", num_samples=1024)
    return c


def clip_frechet(
    c: ml_collections.ConfigDict, preset: str = "", **overrides
) -> ml_collections.ConfigDict:
    """`eval.frechet` over the run's own clips (a tokenizer's reconstructions, a generator
    of whole clips): frames and resolution are referenced from `c.data`, so they are
    written once and follow it."""
    return protocols.protocol_config(
        preset,
        num_frames=c.data.get_ref("num_frames"),
        resolution=c.data.get_ref("resolution"),
        **overrides,
    )


def tokenizer_runlocal(c: ml_collections.ConfigDict, *, num_frames: int) -> None:
    """Shrinks a `tokenizer_config` experiment in place to a CPU run on embedded data:
    `num_frames` x 32 x 32 clips of moving digits and real clips, width 16, one residual
    block per level, batch 4, 200 steps. The experiment keeps its architecture."""
    c.data.update(name="moving_digits+real_clips", path="", missing_hint="")
    c.data.update(num_frames=num_frames, resolution=32)
    c.eval.path = ""
    c.model.update(base_channels=16, num_res_blocks=1, num_groups=8)
    c.discriminator.update(base_channels=16, channel_multipliers=(2, 4, 4))
    c.batch_size = 4
    c.num_train_steps = 200
    c.optimizer.warmup_steps = 20
    c.checkpoint.every_steps = 50
    c.log_every_steps = 10
    c.eval.update(datasets=("moving_digits", "real_clips"), num_examples=16, batch_size=4)
    c.eval.every_steps = None
    c.eval.frechet.num_samples = 16


def audio_tokenizer_config() -> ml_collections.ConfigDict:
    """VideoPoet's audio tokenizer (thesis 8.3.1): a SoundStream-style codec, 2.125 s of
    16 kHz audio -> 106 latent frames x 4 RVQ levels of 1024 codes (2 kbit/s).

    The thesis fixes only that interface (it uses a pretrained SoundStream); the
    architecture defaults are SoundStream's (C = 32, strides 2, 4, 5, 8), and
    every training entry is our choice ("ours") or SoundStream's.
    """
    c = ml_collections.ConfigDict()
    c.trainer = "audio_tokenizer"
    c.seed = 0
    c.sample_rate = 16_000  # of every source's `audio` field
    c.model = ml_collections.ConfigDict(
        dict(
            channels=32,
            channel_multipliers=(2, 4, 8, 16),
            strides=(2, 4, 5, 8),  # hop 320: 50 latent frames per second
            latent_dim=128,
            num_levels=4,
            codebook_size=1024,
            ema_decay=0.99,  # codebook EMA (ours)
            dead_code_threshold=0.1,  # assignments per step below which a code restarts (ours)
            quantizer_dropout=True,  # SoundStream's bit-rate scalability
        )
    )
    # Clips of 17 frames at moving digits' 8 frames/s carry 2.125 s of audio (34,000 samples).
    c.data = data_config()
    c.data.update(name="moving_digits", num_frames=17, resolution=32)
    c.batch_size = 128  # ours
    c.num_train_steps = 200_000  # ours
    c.loss = ml_collections.ConfigDict(
        dict(
            l1_weight=1.0,  # time-domain L1 (ours)
            spectral_weight=1.0,  # multi-scale mel distance, FFT 512 / 1024 / 2048
            commitment_weight=1.0,
            # 0 turns the GAN off: no discriminator is built. SoundStream's weights otherwise.
            adversarial_weight=1.0,
            feature_matching_weight=100.0,
            gan_loss_type="hinge",
        )
    )
    c.discriminator = ml_collections.ConfigDict(dict(channels=32, num_layers=3))
    # SoundStream's Adam (b1 0.5, b2 0.9, lr 1e-4); warm-up ours.
    c.optimizer = adam_config(peak_lr=1e-4, warmup_steps=1000, b1=0.5, b2=0.9)
    c.discriminator_optimizer = adam_config(peak_lr=1e-4, warmup_steps=1000, b1=0.5, b2=0.9)
    add_run_settings(c)
    c.eval = reconstruction_eval_config(("moving_digits",), num_examples=256, grid_examples=4)
    return c


def maskgit_config() -> ml_collections.ConfigDict:
    """MAGVIT's masked transformer with COMMIT over frozen tokenizer tokens (thesis 6.4, 6.5.6).

    The defaults are the MAGVIT-v2 Kinetics-600 frame-prediction setup (5.4.2):
    17x128x128 clips -> 5x16x16 tokens of 2^18, factorized into 2 x 2^9, the
    first 5 frames (2 latent frames) as condition, 12 decoding steps, cosine
    schedule, temperature 32; the stage-2 recipe of 6.5.6 (dropout 0.1, Adam
    0.9/0.96, weight decay 0.045, label smoothing 1e-4, gradient norm 1, batch
    256). Experiments adjust tasks, data and decoding. Entries marked "not in
    the thesis" are our choices where it is silent.
    """
    c = ml_collections.ConfigDict()
    c.trainer = "maskgit"
    c.seed = 0
    # A finished tokenizer run (videogen.trainers.tokenizer); its EMA model is used frozen.
    c.tokenizer_workdir = "runs/magvit2_k600"
    # Appended to the "no tokenizer checkpoint" error: the command that trains it.
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit2_k600.py --workdir=runs/magvit2_k600"
    )
    c.model = ml_collections.ConfigDict(
        dict(
            # Table 6.1 variant ("B", "L", "H"), or "" to give the four sizes below
            # (None: unset, as they must be with a variant).
            size="L",  # ~300M parameters, the MLM of 5.4.2
            hidden_size=optional(None, int),
            num_layers=optional(None, int),
            num_heads=optional(None, int),
            mlp_dim=optional(None, int),
            num_factors=2,  # 2^18 -> two sub-vocabularies of 2^9 (5.3.2, 5.4.2)
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            # "learned": MAGVIT's absolute position embeddings; "rope": axial rotary over the
            # token grid (translation-equivariant attention; models/transformer.py).
            position_encoding="learned",
            rope_base=100.0,
            remat=False,
        )
    )
    # Task mixture (videogen/tasks/commit.py); a task's index in `names` is its prompt id.
    c.tasks = ml_collections.ConfigDict(
        dict(
            names=("FP",),
            weights=(1.0,),
            # Per-task field overrides of commit.TASKS; K600 conditions on 5 frames (5.4.2).
            overrides=ml_collections.ConfigDict({"FP": {"first_frames": 5}}),
        )
    )
    c.mask_schedule = "cosine"  # training mask ratios (6.5.6)
    c.loss = ml_collections.ConfigDict(
        dict(
            # Eq. 6.3 weighs every position alike; Table 6.8 ablates dropping terms.
            refine_weight=1.0,
            mask_weight=1.0,
            recons_weight=1.0,
            label_smoothing=1e-4,
        )
    )
    # Class-conditional tasks see the "no class" id instead of the label this often (CFG).
    c.class_drop_prob = 0.1
    c.num_classes = 0  # K600 frame prediction is not class-conditional
    c.data = data_config()
    # A directory of token files (--mode=tokenize) to train from instead of encoding every
    # batch with the frozen tokenizer; "" tokenizes on the fly.
    c.data.token_dir = ""
    # --mode=tokenize: how many training clips to tokenize once, in batches of batch_size.
    # before_training: the training run itself tokenizes them into <workdir>/tokens first
    # (unless data.token_dir names a directory) and trains from the files.
    c.tokenize = ml_collections.ConfigDict(
        dict(num_examples=10_000, batch_size=32, before_training=False)
    )
    c.batch_size = 256
    c.num_train_steps = steps_for_epochs(360, "k600", c.batch_size)  # 5.4.2: 540,000 steps
    # Warm-up length: not in the thesis ("linear warm up").
    c.optimizer = adam_config(
        peak_lr=1e-4, warmup_steps=5000, b1=0.9, b2=0.96, weight_decay=0.045, grad_clip_norm=1.0
    )
    add_run_settings(c)
    # Algorithm 1; 6.5.6's default is cosine, 12 steps, temperature 4.5; 5.4.2 uses 32.
    c.decoding = ml_collections.ConfigDict(
        dict(
            num_steps=12,
            schedule="cosine",
            choice_temperature=32.0,
            # Classifier-free guidance scale for class-conditional tasks (0 = off).
            guidance_scale=0.0,
            # True fixes condition tokens to z~ instead of refining them (not the thesis).
            keep_condition=False,
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            dataset="video_folder",
            path="",  # folder/data_dir of the held-out split when it differs from data.path
            tasks=("FP",),
            # The protocol's 50,000 x 4 samples, read by one loader in one pass (6.5.6).
            num_examples=200_000,
            batch_size=32,
            # A full-protocol evaluation generates 50,000 clips per repeat: at the end only.
            every_steps=optional(None, int),
            at_end=True,
            grid_examples=8,
            fps=8,
            # Training steps of the moving-digits classifier for class accuracy (None: its default).
            classifier_steps=optional(None, int),
        )
    )
    # The K600 protocol (6.5.6): 50,000 x 4 samples, the first 16 frames at 64x64; the real
    # distribution is 2 temporal windows x 3 spatial crops of every video in eval.path.
    c.eval.frechet = protocols.protocol_config("k600_fp")
    return c


def maskgit_runlocal(c: ml_collections.ConfigDict, *, tokenizer: str = "magvit2") -> None:
    """Shrinks a `maskgit_config` experiment in place to a CPU run on embedded data.

    Tokens come from a CPU-sized tokenizer run: `tokenizer="magvit2"` is
    `experiments/magvit2_k600.py:runlocal` (causal LFQ, 9x32x32 clips -> 3x4x4
    tokens of 2^18, factorized 2 x 2^9); `"3dvq"` is
    `experiments/magvit_3dvq.py:runlocal` (MAGVIT 3D-VQ, 16x32x32 -> 4x8x8 tokens
    of 1024). The transformer is a 4-layer BERT of width 128.
    """
    if tokenizer == "magvit2":
        workdir, experiment, num_frames = "runs/magvit2_k600_local", "magvit2_k600.py", 9
    elif tokenizer == "3dvq":
        workdir, experiment, num_frames = "runs/magvit_3dvq_local", "magvit_3dvq.py", 16
    else:
        raise ValueError(f"maskgit_runlocal tokenizer={tokenizer!r}; use 'magvit2' or '3dvq'.")
    c.tokenizer_workdir = workdir
    c.tokenizer_command = (
        f"python -m videogen.main --config=experiments/{experiment}:runlocal --workdir={workdir}"
    )
    c.data.update(name="moving_digits+real_clips", path="", missing_hint="")
    c.data.update(num_frames=num_frames, resolution=32)
    c.model.update(size="", hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512)
    c.batch_size = 8
    c.num_train_steps = 3000
    c.optimizer.warmup_steps = 200
    c.optimizer.peak_lr = 5e-4  # small model, short run: 5x the thesis' rate
    c.checkpoint.every_steps = 500
    c.log_every_steps = 50
    c.eval.update(dataset="moving_digits", path="", num_examples=64, batch_size=8)
    c.eval.update(every_steps=1000, grid_examples=8)
    c.eval.frechet = clip_frechet(c, "quickstart", num_samples=64)
