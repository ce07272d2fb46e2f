"""Sharding presets (videogen/sharding.py): under every preset a model's loss and gradients
on a mesh of 8 fake CPU devices equal one device's, and its parameters are split as the
preset says.

Each case runs the model's loss and gradients through `loop.jit_step`, the trainers' own
jit (parameters sharded by the preset, batch over data x fsdp, activation constraints
active), and compares them with a plain one-device jit of the same function. Compiling
dominates the time, so the cases are chosen rather than crossed:

- the MAGVIT transformer under every preset on every mesh (8,1,1), (2,4,1), (2,2,2),
  (1,4,2): its parameters carry every transformer axis a preset splits (embed, heads, mlp,
  vocab) and its layers every transformer constraint (heads, MLP hidden, residual);
- the audio tokenizer under every preset on (2,2,2), where all three mesh axes are split,
  and under "fsdp_tensor" on (1,4,2): the conv axes (channels in/out) and the conv
  constraints (outputs, kernels in use);
- the video tokenizer, the discriminator and the prefix LM under "fsdp_tensor" on (2,2,2)
  and (1,4,2): the preset that splits the most, on the meshes where fsdp and tensor are
  both > 1. Their layers are the ones above (3D instead of 1D convs, the same transformer
  blocks), so the other presets, which split a subset of those axes, add nothing new.

A preset is only a rule table, so a preset that is right on one model's layers on a mesh
is right on another's with the same layers; the full matrix on the transformer shows that
each preset is right on every mesh shape. The file compiles 25 sharded programs and 5
one-device references (about 60 s on 2 cores from a cold compilation cache).

Every case also checks the sharding of the model's largest kernel, on the parameters and on
their gradients, against what the preset promises, and that the devices hold only a shard.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from videogen import sharding
from videogen.models.audio_tokenizer import SoundStreamTokenizer
from videogen.models.discriminator import StyleGANDiscriminator3d
from videogen.models.prefix_lm import PrefixLM, prefix_lm_loss
from videogen.models.tokenizer import CausalVideoTokenizer
from videogen.models.transformer import MaskedVideoTransformer
from videogen.trainers import loop

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2))
BATCH = 8  # divisible by every mesh's data x fsdp
# The split each preset promises for the dimensions of the checked kernels (all of them
# divisible by fsdp = 4 and tensor = 2); every other dimension stays whole.
PROMISED = {
    "data_parallel": {},
    "fsdp": {"channels_out": "fsdp", "embed": "fsdp"},
    "fsdp_tensor": {
        "channels_in": "fsdp",
        "channels_out": "tensor",
        "embed": "fsdp",
        "heads": "tensor",
        "mlp": "tensor",
    },
}


def _rngs() -> nnx.Rngs:
    # 'rbg' keys compile much faster on CPU than threefry.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


@dataclasses.dataclass
class Family:
    """A tiny model split into parameters (host copies) and the rest, a batch, a loss."""

    graphdef: nnx.GraphDef
    params: nnx.State  # numpy leaves: every run places its own copy (jit_step donates it)
    rest: nnx.State
    batch: dict[str, np.ndarray]
    loss: Callable[[nnx.Module, dict], jax.Array]
    checked: str  # path of the kernel whose sharding is checked
    checked_axes: tuple[str | None, ...]  # its logical axis names

    def step(self, params: nnx.State, batch: dict) -> tuple[nnx.State, dict]:
        """(gradients, {"loss"}): a train step's shape, state in and state out."""

        def loss(p):
            return self.loss(nnx.merge(self.graphdef, p, self.rest), batch)

        value, grads = jax.value_and_grad(loss)(params)
        return grads, {"loss": value}


def _value(leaf):
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _flat(state: nnx.State) -> dict[str, object]:
    return {"/".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(state)}


def _family(build: Callable[[], nnx.Module], batch, loss, checked: str | None = None) -> Family:
    model = nnx.jit(build)()  # one program for the initialisation, not one per op
    model.eval()  # no dropout, no codebook updates: the loss is a function of the parameters
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    axes = {path: tuple(v.get_metadata()["out_sharding"]) for path, v in _flat(params).items()}
    if checked is None:  # the largest conv kernel
        kernels = [path for path, names in axes.items() if "channels_in" in names]
        checked = max(kernels, key=lambda path: _value(_flat(params)[path]).size)
    params = jax.tree.map(np.asarray, params)
    return Family(graphdef, params, rest, batch, loss, checked, axes[checked])


def _reconstruction_loss(model, batch):
    reconstruction, aux = model(batch["x"])
    return jnp.mean(jnp.square(reconstruction - batch["x"])) + sum(aux["losses"].values())


def _cross_entropy(logits, targets):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _video_tokenizer() -> Family:
    rng = np.random.default_rng(0)
    return _family(
        lambda: CausalVideoTokenizer(
            base_channels=8,
            channel_multipliers=(1,),  # no down-sampling level: half the compile time
            num_res_blocks=1,
            temporal_downsample=(),
            num_bits=4,
            num_groups=2,
            # At the default 0.01 the entropy loss scales latents by 400, so that rounding
            # alone moves some gradients by 0.5% even between two data-parallel runs.
            entropy_temperature=1.0,
            rngs=_rngs(),
        ),
        {"x": rng.uniform(-1, 1, (BATCH, 3, 8, 8, 3)).astype(np.float32)},
        _reconstruction_loss,
    )


def _discriminator() -> Family:
    rng = np.random.default_rng(1)
    return _family(
        lambda: StyleGANDiscriminator3d(
            base_channels=4, channel_multipliers=(1, 2), num_frames=2, resolution=8, rngs=_rngs()
        ),
        {"x": rng.uniform(-1, 1, (BATCH, 2, 8, 8, 3)).astype(np.float32)},
        lambda model, batch: jnp.mean(jax.nn.softplus(-model(batch["x"]))),
    )


def _magvit_transformer() -> Family:
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 9, (BATCH, 16, 2)).astype(np.int32)  # 8 = [MASK]
    return _family(
        lambda: MaskedVideoTransformer(
            num_tokens=16,
            sub_vocab_size=8,
            num_factors=2,
            prefix_vocab_size=5,
            prefix_length=2,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            mlp_dim=64,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
            rngs=_rngs(),
        ),
        {
            "tokens": tokens,
            "prefix": rng.integers(0, 5, (BATCH, 2)).astype(np.int32),
            "targets": rng.integers(0, 8, tokens.shape).astype(np.int32),
        },
        lambda model, batch: _cross_entropy(
            model(batch["tokens"], batch["prefix"]), batch["targets"]
        ),
        checked="stack/blocks/0/attention/query",
    )


def _prefix_lm() -> Family:
    rng = np.random.default_rng(3)
    return _family(
        lambda: PrefixLM(
            vocab_size=64,
            pad_id=0,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            mlp_dim=64,
            factor_ranges=((48, 64),),  # every position a code of 2 factors
            rngs=_rngs(),
        ),
        {
            "tokens": rng.integers(1, 48, (BATCH, 16)).astype(np.int32),
            "factor_tokens": rng.integers(48, 64, (BATCH, 16, 1)).astype(np.int32),
            "prefix_length": rng.integers(1, 8, (BATCH,)).astype(np.int32),
        },
        lambda model, batch: prefix_lm_loss(
            model(batch["tokens"], batch["factor_tokens"], batch["prefix_length"]),
            batch["tokens"],
            batch["factor_tokens"],
            jnp.arange(16) >= batch["prefix_length"][:, None],
            factor_starts=jnp.asarray([48]),
            pad_id=0,
        ),
        checked="stack/blocks/0/mlp/wi",
    )


def _audio_tokenizer() -> Family:
    rng = np.random.default_rng(4)
    return _family(
        lambda: SoundStreamTokenizer(
            channels=4,
            channel_multipliers=(1, 2),
            strides=(2, 2),
            latent_dim=8,
            num_levels=2,
            codebook_size=16,
            quantizer_dropout=False,
            rngs=_rngs(),
        ),
        {"x": rng.uniform(-1, 1, (BATCH, 64)).astype(np.float32)},
        _reconstruction_loss,
    )


BUILDERS = {
    "video_tokenizer": _video_tokenizer,
    "discriminator": _discriminator,
    "magvit_transformer": _magvit_transformer,
    "prefix_lm": _prefix_lm,
    "audio_tokenizer": _audio_tokenizer,
}
CASES = [
    *(("magvit_transformer", preset, mesh) for preset in sharding.PRESETS for mesh in MESHES),
    *(("audio_tokenizer", preset, (2, 2, 2)) for preset in sharding.PRESETS),
    ("audio_tokenizer", "fsdp_tensor", (1, 4, 2)),
    *(
        (family, "fsdp_tensor", mesh)
        for family in ("video_tokenizer", "discriminator", "prefix_lm")
        for mesh in ((2, 2, 2), (1, 4, 2))
    ),
]


@pytest.fixture(scope="module")
def families():
    """Each family built, and its one-device loss and gradients computed, once per module."""

    @functools.cache
    def get(name: str) -> tuple[Family, tuple]:
        family = BUILDERS[name]()
        reference = jax.jit(family.step)(family.params, family.batch)
        return family, jax.device_get(reference)

    return get


@pytest.mark.parametrize("name,preset,mesh_shape", CASES)
def test_preset_gives_the_one_device_loss_and_gradients(families, name, preset, mesh_shape):
    family, (ref_grads, ref_metrics) = families(name)
    mesh = sharding.make_mesh(mesh_shape)
    shardings = sharding.state_shardings(family.params, mesh, preset)
    program = loop.jit_step(family.step, shardings, mesh, preset=preset)
    params = jax.device_put(family.params, shardings)
    # The checked kernel, on the mesh and as a gradient, is split as the preset promises,
    # and each device holds only its shard.
    axes = [PROMISED[preset].get(name) for name in family.checked_axes]
    expected = NamedSharding(mesh, PartitionSpec(*axes))

    def check_split(state):
        array = _value(_flat(state)[family.checked])
        assert array.sharding.is_equivalent_to(expected, array.ndim), (array.sharding, axes)
        shard = tuple(n // (mesh.shape[a] if a else 1) for n, a in zip(array.shape, axes))
        assert all(s.data.shape == shard for s in array.addressable_shards)

    check_split(params)  # before the step, which is given (donated) the parameters
    batch = jax.device_put(family.batch, sharding.batch_sharding(mesh))
    grads, metrics = program(params, batch)
    check_split(grads)

    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    flat_ref = _flat(ref_grads)
    flat_grads = _flat(grads)
    assert flat_grads.keys() == flat_ref.keys()
    # Absolute tolerance on the scale of all gradients: some are zero up to rounding (the
    # attention key bias cancels in the softmax).
    scale = max(float(np.max(np.abs(_value(g)))) for g in flat_ref.values())
    for path, g in flat_grads.items():
        np.testing.assert_allclose(
            np.asarray(_value(g)),
            _value(flat_ref[path]),
            rtol=1e-4,
            atol=1e-6 * scale,
            err_msg=path,
        )


def test_data_parallel_replicates_and_fsdp_tensor_splits_every_large_kernel(families):
    """Over all parameters of a conv model and a transformer on (1, 4, 2): "data_parallel"
    keeps every one whole, "fsdp_tensor" leaves at most the small ones (biases, norms,
    kernels with no dimension divisible by the mesh axes) whole. The RVQ codebooks (train
    state, not parameters) split their entries over fsdp."""
    mesh = sharding.make_mesh((1, 4, 2))
    audio, _ = families("audio_tokenizer")
    codebooks = _flat(sharding.state_shardings(audio.rest, mesh, "fsdp_tensor"))
    assert codebooks["quantizer/codebooks"].spec == PartitionSpec(None, "fsdp", None)
    for name in ("audio_tokenizer", "magvit_transformer"):
        family, _ = families(name)
        leaves = jax.tree.leaves(family.params)
        whole = jax.tree.leaves(sharding.state_shardings(family.params, mesh, "data_parallel"))
        assert all(s.is_fully_replicated for s in whole)
        split = jax.tree.leaves(sharding.state_shardings(family.params, mesh, "fsdp_tensor"))
        sharded_bytes = sum(
            leaf.size * 4 for leaf, s in zip(leaves, split) if not s.is_fully_replicated
        )
        assert sharded_bytes > 0.8 * sum(leaf.size * 4 for leaf in leaves), name


def test_constrain_maps_activation_axes_through_the_active_preset_only():
    x = jnp.ones((8, 3, 4, 6))
    axes = ("activation_batch", None, "activation_heads", None)
    assert sharding.constrain(x, axes) is x  # no active preset: eager and unit-test calls
    with pytest.raises(ValueError, match="name 3 dimensions"):
        sharding.constrain(x, axes[:3])
    mesh = sharding.make_mesh((2, 2, 2))
    for preset, heads in (("data_parallel", None), ("fsdp", None), ("fsdp_tensor", "tensor")):

        def f(x, preset=preset):
            with sharding.activation_sharding(mesh, preset):
                return sharding.constrain(x * 2.0, axes), sharding.constrain(x[:, :, :3], axes)

        y, odd = jax.jit(f)(x)
        expected = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, heads, None))
        assert y.sharding.is_equivalent_to(expected, 4), (preset, y.sharding)
        # 3 heads do not divide over 2 tensor devices: that dimension stays whole.
        whole = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None, None))
        assert odd.sharding.is_equivalent_to(whole, 4), (preset, odd.sharding)


def test_unknown_preset_is_named_with_the_valid_ones():
    mesh = sharding.make_mesh((8, 1, 1))
    with pytest.raises(
        ValueError, match=r"config.sharding='zero3'.*'data_parallel', 'fsdp', 'fsdp_tensor'"
    ):
        sharding.state_shardings(nnx.State({}), mesh, "zero3")
    with pytest.raises(ValueError, match="'tensor_only'"):
        with sharding.activation_sharding(mesh, "tensor_only"):
            pass


def test_every_preset_has_a_rule_for_every_logical_axis():
    for preset, rules in sharding.PRESETS.items():
        assert set(rules) == {*sharding.PARAMETER_AXES, *sharding.ACTIVATION_AXES}, preset
        assert rules["activation_batch"] == sharding.BATCH_AXES, preset
