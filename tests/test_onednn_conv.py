"""oneDNN's convolution (videogen/kernels/onednn_conv.py) against XLA's: values, first and
second derivatives, the layer forms that use it, when it is used, and its errors."""

import platform

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen import mfu, sharding
from videogen.kernels import build, onednn_conv
from videogen.models import layers
from python_child import run_python

# setup.sh installs oneDNN's Linux x86-64 wheels and builds the library; there it must load.
ONEDNN_PLATFORM = platform.system() == "Linux" and platform.machine() == "x86_64"
needs_library = pytest.mark.skipif(
    not ONEDNN_PLATFORM, reason="oneDNN's PyPI wheels are Linux x86-64 only"
)


@needs_library
def test_setup_builds_and_loads_the_library():
    assert onednn_conv.load() is None, onednn_conv.load()


def _loss(conv, strides, padding):
    def loss(x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, strides, padding)))

    return loss


def _values_and_derivatives(conv, x, kernel, strides, padding):
    """y, dL/dx, dL/dk, and the derivative of |dL/dx|^2 with respect to the kernel (the shape
    of the R1 penalty: a gradient of a gradient)."""
    loss = _loss(conv, strides, padding)

    def r1(kernel):
        return jnp.sum(jax.grad(loss)(x, kernel) ** 2)

    @jax.jit
    def run(x, kernel):
        return (
            conv(x, kernel, strides, padding),
            *jax.grad(loss, (0, 1))(x, kernel),
            jax.grad(r1)(kernel),
        )

    return run(x, kernel)


# (input shape, kernel window + (co,), strides, padding). 2D: 'same' 3x3, a strided
# down-sampler with TF-'SAME' uneven padding, 1x1, an odd map under stride 2, no padding.
# 3D: the tokenizer's causal 3x3x3 (2 frames before, none after), its strided down-sampler,
# a non-causal one, 1x1x1.
CASES = [
    ((2, 9, 11, 3), (3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (4, 4, 6), (2, 2), ((1, 2), (1, 2))),
    ((3, 7, 6, 5), (1, 1, 4), (1, 1), ((0, 0), (0, 0))),
    ((2, 9, 10, 3), (3, 3, 4), (2, 2), ((0, 1), (1, 0))),
    ((1, 6, 5, 2), (3, 3, 3), (1, 2), ((0, 0), (0, 0))),
    ((2, 5, 8, 7, 3), (3, 3, 3, 4), (1, 1, 1), ((2, 0), (1, 1), (1, 1))),
    ((1, 5, 8, 8, 4), (3, 3, 3, 6), (2, 2, 2), ((2, 0), (0, 1), (0, 1))),
    ((2, 4, 6, 5, 2), (3, 3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ((1, 3, 4, 4, 5), (1, 1, 1, 2), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
]


def _xla(x, kernel, strides, padding):
    conv = layers.conv2d_xla if x.ndim == 4 else layers.conv3d_single
    return conv(x, kernel, strides, padding)


def _operands(x_shape, kernel_shape):
    keys = jax.random.split(jax.random.key(0), 2)
    *window, co = kernel_shape
    x = jax.random.normal(keys[0], x_shape)
    return x, jax.random.normal(keys[1], (*window, x_shape[-1], co))


@needs_library
@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", CASES)
def test_values_and_derivatives_equal_xla(x_shape, kernel_shape, strides, padding):
    x, kernel = _operands(x_shape, kernel_shape)
    ours = _values_and_derivatives(onednn_conv.conv, x, kernel, strides, padding)
    xla = _values_and_derivatives(_xla, x, kernel, strides, padding)
    for name, a, b in zip(("y", "dx", "dk", "d|dx|^2/dk"), ours, xla):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))), err_msg=name
        )


def _jaxpr_text(fn, *args) -> str:
    """The traced program of a fresh wrapper of `fn`: jax caches traces per function, and
    what is traced here depends on state outside the arguments."""
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


@needs_library
def test_convolutions_take_onednn_for_float32_on_one_device_only():
    x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))

    def conv(x, kernel):
        return layers.conv2d_nhwc(x, kernel, (1, 1), ((1, 1), (1, 1)))

    assert onednn_conv.FORWARD in _jaxpr_text(conv, x, kernel)
    # bfloat16 has no oneDNN handler here: XLA's.
    as_bf16 = (x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert onednn_conv.FORWARD not in _jaxpr_text(conv, *as_bf16)
    # A step split over devices: XLA's SPMD partitioner cannot split a custom call.
    mesh = jax.make_mesh((2, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:2])
    with sharding.activation_sharding(mesh, "data_parallel"):
        assert sharding.partitioned()
        assert onednn_conv.FORWARD not in _jaxpr_text(conv, x, kernel)
    one = jax.make_mesh((1, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:1])
    with sharding.activation_sharding(one, "data_parallel"):
        assert not sharding.partitioned()
        assert onednn_conv.FORWARD in _jaxpr_text(conv, x, kernel)


@needs_library
@pytest.mark.parametrize(
    "strides, causal, padding_mode",
    [((1, 1, 1), True, "zeros"), ((2, 2, 2), True, "zeros"), ((1, 1, 1), False, "reflect"),
     ((1, 2, 2), True, "reflect")],
)  # fmt: skip
def test_causal_conv3d_on_onednn_equals_xla(monkeypatch, strides, causal, padding_mode):
    """The tokenizer's layer, value and gradients, with its 3D convolution on oneDNN and with
    oneDNN switched off (XLA's per-tap 2D convolutions)."""
    conv = layers.CausalConv3d(
        3, 4, strides=strides, causal=causal, padding_mode=padding_mode, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(conv)
    x = jax.random.normal(jax.random.key(1), (2, 5, 8, 8, 3))

    def loss(params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

    assert onednn_conv.FORWARD in _jaxpr_text(loss, params, x)
    ours = jax.value_and_grad(loss, (0, 1))(params, x)
    monkeypatch.setattr(onednn_conv, "available", lambda: False)
    assert onednn_conv.FORWARD not in _jaxpr_text(loss, params, x)
    xla = jax.value_and_grad(loss, (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_missing_headers_name_the_packages_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(onednn_conv, "onednn_prefix", lambda: tmp_path)
    with pytest.raises(onednn_conv.KernelUnavailable, match="onednn-devel-cpu-gomp==2023.2.0"):
        onednn_conv.build()


@needs_library
def test_missing_compiler_is_named_and_nothing_half_built_is_left(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv(build.CACHE_VARIABLE, str(cache))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(onednn_conv.KernelUnavailable, match="no C\\+\\+ compiler"):
        onednn_conv.build()
    assert not cache.exists() or not list(cache.iterdir())


_ON_XLA = (
    "import jax, jax.numpy as jnp\n"
    "from videogen.models import layers\n"
    "from videogen.kernels import onednn_conv\n"
    "f = lambda x, k: layers.conv2d_nhwc(x, k, (1, 1), ((1, 1), (1, 1)))\n"
    "x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))\n"
    "assert onednn_conv.FORWARD not in str(jax.make_jaxpr(f)(x, k))\n"
    "assert float(f(x, k)[0, 1, 1, 0]) == 18.0\n"
    "print(onednn_conv.load())\n"
)


def test_turned_off_runs_on_xla():
    out = run_python(_ON_XLA, **{onednn_conv.DISABLE_VARIABLE: "0"})
    assert "turned off by VIDEOGEN_ONEDNN=0" in out.stdout


def test_a_machine_that_cannot_build_it_runs_on_xla_and_says_why(tmp_path):
    """No compiler (and no library built before): XLA's convolution, the reason logged once."""
    out = run_python(_ON_XLA, CXX="no-such-compiler", **{build.CACHE_VARIABLE: str(tmp_path)})
    assert out.stderr.count("oneDNN convolution unavailable, using XLA's") == 1, out.stderr
    reason = "no C++ compiler" if ONEDNN_PLATFORM else "oneDNN's headers are not installed"
    assert reason in out.stderr and reason in out.stdout


@needs_library
@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", [CASES[2], CASES[4], CASES[8]])
def test_program_cost_counts_the_onednn_convolutions_as_xla_counts_its_own(
    x_shape, kernel_shape, strides, padding
):
    """MFU and the benchmarks read FLOPs from XLA's cost analysis, which sees nothing inside a
    custom call: `mfu.program_cost` adds oneDNN's. Without padding XLA counts its own
    convolutions by the same formula, so a whole gradient program costs the same both ways."""
    x, kernel = _operands(x_shape, kernel_shape)

    def cost(conv):
        step = jax.jit(jax.grad(_loss(conv, strides, padding), (0, 1)))
        return mfu.program_cost(step.lower(x, kernel).compile()).flops_per_device

    assert cost(onednn_conv.conv) == pytest.approx(cost(_xla), rel=1e-6)
    forward = jax.jit(lambda x, k: onednn_conv.conv(x, k, strides, padding))
    y = forward(x, kernel)
    expected = 2 * y.size * np.prod(kernel.shape[:-1])
    assert mfu.program_cost(forward.lower(x, kernel).compile()).flops_per_device == expected
