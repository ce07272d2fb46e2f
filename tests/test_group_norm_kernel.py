"""The C++ group-norm kernel (videogen/kernels/group_norm.py) against XLA's reference:
values, first and second derivatives, the layer that uses it, when it is used, its errors."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen import sharding
from videogen.kernels import build, group_norm
from videogen.models import layers
from python_child import run_python

EPSILON = 1e-6


def test_setup_builds_and_loads_the_library():
    assert group_norm.load() is None, group_norm.load()


def _values_and_derivatives(normalize, x, groups):
    """y, dL/dx, and d|dL/dx|^2/dx (an R1 penalty's gradient of a gradient) for a loss that
    weights every output differently."""
    weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

    def loss(x):
        return jnp.sum(jnp.sin(normalize(x, groups, EPSILON)) * weights)

    @jax.jit
    def run(x):
        return (
            normalize(x, groups, EPSILON),
            jax.grad(loss)(x),
            jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))(x),
        )

    return run(x)


# (b, t, h, w, c), groups: one channel per group, several, a single group, odd positions.
CASES = [((2, 3, 8, 8, 8), 8), ((1, 2, 4, 6, 16), 4), ((2, 1, 5, 3, 6), 1)]


@pytest.mark.parametrize("shape, groups", CASES)
def test_values_and_derivatives_equal_xla(shape, groups):
    # A scale per frame and an offset per channel, as activations have.
    key_x, key_s = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, shape) * jnp.exp(jax.random.normal(key_s, shape[:2] + (1, 1, 1)))
    x = x + 3.0 * jnp.arange(shape[-1], dtype=jnp.float32) / shape[-1]
    ours = _values_and_derivatives(group_norm.normalize, x, groups)
    xla = _values_and_derivatives(group_norm.reference_normalize, x, groups)
    for name, a, b in zip(("values", "gradient", "second derivative"), ours, xla):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_a_large_mean_loses_no_more_digits_than_xla():
    """E[x^2] - E[x]^2 in double against XLA's centred float32 variance, both against float64."""
    x = np.random.default_rng(0).normal(size=(1, 2, 8, 8, 4)).astype(np.float32) * 0.1 + 100.0
    xg = x.astype(np.float64).reshape(1, 2, 8, 8, 2, 2)
    mean = xg.mean(axis=(2, 3, 5), keepdims=True)
    std = np.sqrt(((xg - mean) ** 2).mean(axis=(2, 3, 5), keepdims=True) + EPSILON)
    exact = ((xg - mean) / std).reshape(x.shape)
    ours = np.abs(group_norm.normalize(jnp.asarray(x), 2, EPSILON) - exact).max()
    xla = np.abs(group_norm.reference_normalize(jnp.asarray(x), 2, EPSILON) - exact).max()
    assert ours <= max(xla, 1e-4), (ours, xla)


def test_a_constant_frame_normalises_to_zero_with_zero_gradient():
    x = jnp.full((1, 2, 4, 4, 4), 3.0)
    y, dx, _ = _values_and_derivatives(group_norm.normalize, x, 2)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, 0.0, atol=1e-6)


def _jaxpr_text(fn, *args) -> str:
    """The traced program of a fresh wrapper of `fn` (jax caches traces per function, and
    what is traced here depends on state outside the arguments)."""
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


@pytest.mark.parametrize("per_frame", [True, False])
def test_group_norm_layer_on_the_kernel_equals_xla(monkeypatch, per_frame):
    norm = layers.GroupNorm(8, num_groups=4, per_frame=per_frame)
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 8)) * 2.0 + 1.0

    def loss(x):
        return jnp.sum(jnp.tanh(norm(x)) * jnp.arange(8.0))

    run = lambda x: (norm(x), jax.grad(loss)(x))  # noqa: E731
    assert group_norm.FORWARD in _jaxpr_text(run, x)
    ours = jax.jit(run)(x)
    monkeypatch.setattr(layers, "use_group_norm_kernel", lambda: False)
    assert group_norm.FORWARD not in _jaxpr_text(run, x)
    xla = jax.jit(run)(x)
    for a, b in zip(ours, xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_group_norm_takes_the_kernel_on_one_device_only():
    norm = layers.GroupNorm(8, num_groups=4)
    x = jnp.ones((1, 2, 4, 4, 8))
    assert group_norm.FORWARD in _jaxpr_text(norm, x)
    # bfloat16 activations normalise in float32, on the kernel too.
    assert group_norm.FORWARD in _jaxpr_text(norm, x.astype(jnp.bfloat16))
    # A step split over devices: XLA's SPMD partitioner cannot split a custom call.
    mesh = jax.make_mesh((2, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:2])
    with sharding.activation_sharding(mesh, "data_parallel"):
        assert group_norm.FORWARD not in _jaxpr_text(norm, x)
    one = jax.make_mesh((1, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:1])
    with sharding.activation_sharding(one, "data_parallel"):
        assert group_norm.FORWARD in _jaxpr_text(norm, x)


def test_adaptive_group_norm_uses_the_kernel():
    norm = layers.AdaptiveGroupNorm(8, 4, num_groups=4, rngs=nnx.Rngs(0))
    x, cond = jnp.ones((1, 3, 4, 4, 8)), jnp.ones((1, 2, 2, 2, 4))
    assert group_norm.FORWARD in _jaxpr_text(norm, x, cond)


_ON_XLA = (
    "import jax, jax.numpy as jnp\n"
    "from videogen.models import layers\n"
    "from videogen.kernels import group_norm\n"
    "norm = layers.GroupNorm(4, num_groups=2)\n"
    "x = jnp.arange(32.0).reshape(1, 1, 2, 4, 4)\n"
    "assert group_norm.FORWARD not in str(jax.make_jaxpr(norm)(x))\n"
    "assert abs(float(jnp.mean(norm(x)))) < 1e-6\n"
    "print(group_norm.load())\n"
)


def test_turned_off_runs_on_xla():
    out = run_python(_ON_XLA, **{group_norm.DISABLE_VARIABLE: "0"})
    assert "turned off by VIDEOGEN_GROUP_NORM_KERNEL=0" in out.stdout


def test_a_machine_without_a_compiler_runs_on_xla_and_says_why(tmp_path):
    out = run_python(_ON_XLA, CXX="no-such-compiler", **{build.CACHE_VARIABLE: str(tmp_path)})
    assert out.stderr.count("group-norm kernel unavailable, using XLA's norms") == 1, out.stderr
    assert "no C++ compiler" in out.stderr and "no C++ compiler" in out.stdout
    assert not list(tmp_path.iterdir())
