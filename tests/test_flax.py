"""jaxops.flax: the NNX and Linen modules against the jaxops ops they wrap and against Flax's
own layers (activations, PReLU with one slope, BatchNorm with ONNX's momentum), under the
Flax and JAX transforms, and in a few optax training steps."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn, nnx

import jaxops as jo
from jaxops.flax import _common, linen as jnn, nnx as jnnx


@dataclasses.dataclass(frozen=True)
class Act:
    name: str  # the class in jaxops.flax.nnx and jaxops.flax.linen
    kwargs: dict
    op: Callable  # the jaxops function the module must call
    flax: Callable | None  # Flax's built-in with the same semantics, if any
    # jaxops's LeakyReLU derivative at -0.0 is alpha (the sign bit decides, README), jax.nn's
    # is 1 (-0.0 >= 0): the one place the derivatives differ
    differs_at_minus_zero: bool = False
    # the derivative's absolute tolerance against Flax's (autodiff of its formula)
    grad_atol: float = 1e-7

    def __str__(self):
        return self.name + "".join(f"-{k}={v}" for k, v in self.kwargs.items())

    def nnx(self):
        return getattr(jnnx, self.name)(**self.kwargs)

    def linen(self):
        return getattr(jnn, self.name)(**self.kwargs)


# Flax's function where it is not named as the op or has other defaults (gelu's tanh form,
# hard_sigmoid's slope 1/6: compared below with matching attributes), and where the
# derivatives differ
_FLAX = {"relu_n": nnx.relu6, "softsign": nnx.soft_sign,
         "gelu": partial(nnx.gelu, approximate=False), "hard_sigmoid": None}
_DIFFERS_AT_MINUS_ZERO = {"leaky_relu"}


def _generated(op) -> Act:
    fn = op.schema.function
    flax = _FLAX[fn] if fn in _FLAX else getattr(nnx, fn, None)
    return Act(_common.module_name(fn), {}, op, flax,
               differs_at_minus_zero=fn in _DIFFERS_AT_MINUS_ZERO)


# every module made from the registry with its defaults, and some attributes
ACTIVATIONS = [
    *(_generated(op) for op in _common.activation_ops()),
    Act("ReluN", {"n": 2.0}, partial(jo.relu_n, n=2.0), None),
    Act("LeakyReLU", {"alpha": 0.2}, partial(jo.leaky_relu, alpha=0.2),
        partial(nnx.leaky_relu, negative_slope=0.2), differs_at_minus_zero=True),
    Act("Softmax", {"axis": 0}, partial(jo.softmax, axis=0), partial(nnx.softmax, axis=0)),
    # Flax's tanh form loses the derivative's tail to the cancellation in 1 + tanh:
    # gelu'(-5.19) = -4.3958e-7 (jaxops -4.3958e-7, Flax 0), gelu'(5.01) = 1 + 1.43e-6
    Act("GELU", {"approximate": "tanh"}, partial(jo.gelu, approximate="tanh"), nnx.gelu,
        grad_atol=2e-6),
    Act("HardSigmoid", {"alpha": 1 / 6}, partial(jo.hard_sigmoid, alpha=1 / 6),
        nnx.hard_sigmoid),
]


def _x(shape=(4, 6), seed=0):
    x = np.random.default_rng(seed).uniform(-8, 8, shape).astype(np.float32)
    x.flat[:4] = [0.0, 2.0, 6.0, -0.0]  # the kinks of ReLU, ReluN(2), ReLU6
    return jnp.asarray(x)


def _weights(shape, seed=1):
    # a weighted sum, so that softmax's gradient is not identically 0
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# ------------------------------------------------------------------------------ imports

def test_import_jaxops_does_not_import_flax():
    code = "import sys, jaxops; print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_jaxops_flax_without_flax_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "jaxops.flax" or m.startswith("jaxops.flax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flax", None)  # makes `import flax` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'jaxops\[flax\]'"):
        importlib.import_module("jaxops.flax")


def test_both_apis_have_the_same_layers():
    explicit = {"BatchNorm", "Dropout", "PReLU", "LayerNorm", "RMSNorm", "GroupNorm"}
    generated = {_common.module_name(op.schema.function) for op in _common.activation_ops()}
    # the names users had before the modules were generated are still there
    assert {"ReLU", "ReluN", "LeakyReLU", "Softsign", "Sigmoid", "Tanh", "Softmax"} <= generated
    assert set(jnnx.__all__) == set(jnn.__all__) == explicit | generated | {
        "module_for", "ACTIVATIONS"}
    assert set(jnnx.ACTIVATIONS) == set(jnn.ACTIVATIONS) == generated
    for name in explicit | generated:
        assert issubclass(getattr(jnnx, name), nnx.Module)
        assert issubclass(getattr(jnn, name), nn.Module)


def test_every_one_input_builtin_op_is_a_module():
    # an op added to a family module becomes a module with nothing written in jaxops.flax
    for s in jo.schema.builtin_forward_schemas():
        if len(s.inputs) == 1 and len(s.outputs) == 1:
            name = _common.module_name(s.function)
            assert getattr(jnnx, name) is jnnx.ACTIVATIONS[name]
            assert jnnx.ACTIVATIONS[name].__doc__.startswith(f":func:`jaxops.{s.function}`")
            assert jnn.ACTIVATIONS[name].__doc__.startswith(f":func:`jaxops.{s.function}`")


@pytest.mark.parametrize(("function", "name"), [
    ("relu", "ReLU"), ("relu_n", "ReluN"), ("leaky_relu", "LeakyReLU"), ("gelu", "GELU"),
    ("silu", "SiLU"), ("hard_swish", "HardSwish"), ("log_softmax", "LogSoftmax"),
    ("selu", "SELU"), ("glu", "GLU"), ("mish", "Mish")])
def test_module_names_follow_pytorch(function, name):
    assert _common.module_name(function) == name


def test_readme_names_every_flax_module():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Flax modules for `flax.nnx`"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    for name in ("`PReLU`", "`BatchNorm`", "`LayerNorm`", "`RMSNorm`", "`GroupNorm`",
                 "`jaxops.flax.nnx.ReLU`", "`module_for(op)`", "`LeakyReLU`", "`ACTIVATIONS`"):
        assert name in paragraph


# -------------------------------------------------------------------------- activations

@pytest.mark.parametrize("act", ACTIVATIONS, ids=str)
def test_activation_is_the_op_and_matches_flax(act):
    x = _x()
    w = _weights(np.shape(act.op(x)))  # GLU halves the last axis
    want = act.op(x)
    np.testing.assert_array_equal(act.nnx()(x), want)
    np.testing.assert_array_equal(act.linen().apply({}, x), want)
    want_dx = jax.grad(lambda x: jnp.sum(act.op(x) * w))(x)
    got_dx = jax.grad(lambda x: jnp.sum(act.nnx()(x) * w))(x)
    np.testing.assert_array_equal(got_dx, want_dx)
    if act.flax is not None:
        # same values and the same derivative at the kinks (0 and the ReLU6 bound)
        np.testing.assert_allclose(want, act.flax(x), rtol=1e-6, atol=1e-7)
        flax_dx = jax.grad(lambda x: jnp.sum(act.flax(x) * w))(x)
        if act.differs_at_minus_zero:
            at = np.signbit(x) & (x == 0)
            alpha = act.kwargs.get("alpha", 0.01)
            np.testing.assert_allclose(got_dx[at], alpha * w[at], rtol=1e-6)
            np.testing.assert_allclose(flax_dx[at], w[at], rtol=1e-6)
            got_dx, flax_dx = got_dx[~at], flax_dx[~at]
        np.testing.assert_allclose(got_dx, flax_dx, rtol=1e-6, atol=act.grad_atol)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=str)
def test_activation_under_nnx_transforms(act):
    x = _x()
    w = _weights(np.shape(act.op(x)))
    module = act.nnx()
    want = act.op(x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(module, x), want, rtol=1e-6)
    dx = nnx.grad(lambda m, x: jnp.sum(m(x) * w), argnums=1)(module, x)
    np.testing.assert_allclose(dx, jax.grad(lambda x: jnp.sum(act.op(x) * w))(x), rtol=1e-6)
    # vmap over rows: the module sees one row at a time; Softmax(axis=0) then normalizes the
    # row, which is what a row-wise op must do
    rows = nnx.vmap(lambda m, r: m(r), in_axes=(None, 0))(module, x)
    np.testing.assert_allclose(rows, jnp.stack([act.op(r) for r in x]), rtol=1e-6)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=str)
def test_activation_linen_init_apply_jit_grad(act):
    x = _x()
    w = _weights(np.shape(act.op(x)))
    module = act.linen()
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.leaves(variables) == []  # stateless
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x), act.op(x), rtol=1e-6)
    dx = jax.grad(lambda x: jnp.sum(module.apply(variables, x) * w))(x)
    np.testing.assert_allclose(dx, jax.grad(lambda x: jnp.sum(act.op(x) * w))(x), rtol=1e-6)


def test_activation_attributes_reach_the_op():
    x = jnp.array([-4.0, 1.0, 3.0])
    np.testing.assert_array_equal(jnnx.ReluN(n=2.0)(x), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(jnn.LeakyReLU(alpha=0.5).apply({}, x), [-2.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="relu_n"):
        jnnx.ReluN(n=0.0)(x)
    with pytest.raises(ValueError, match="relu_n"):
        jnn.ReluN(n=-1.0).apply({}, x)


def test_activations_compose_in_sequential():
    x = _x()
    model = nnx.Sequential(jnnx.LeakyReLU(alpha=0.1), jnnx.Tanh(), jnnx.Softmax())
    np.testing.assert_allclose(model(x), jo.softmax(jo.tanh(jo.leaky_relu(x, alpha=0.1))),
                               rtol=1e-6)
    lin = nn.Sequential([jnn.ReluN(n=3.0), jnn.Sigmoid()])
    np.testing.assert_allclose(lin.apply({}, x), jo.sigmoid(jo.relu_n(x, n=3.0)), rtol=1e-6)


# ------------------------------------------------------------------- module_for (schemas)

def _squareplus_ops():
    """A user op in a test-only domain, with a required attribute after an optional one."""

    @jo.defop(name="FlaxTestSquareplus", domain="tests.flax")
    def flax_test_squareplus(x, *, b=4.0, scale: float):
        return scale * (x + jnp.sqrt(x * x + b)) / 2

    @jo.defop(name="FlaxTestAffine", domain="tests.flax")
    def flax_test_affine(x, w):
        return x * w

    return flax_test_squareplus, flax_test_affine


@pytest.fixture
def user_ops():
    ops = _squareplus_ops()
    yield ops
    for op in ops:
        jo.schema.unregister(op.name)


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if not a.kwargs], ids=str)
def test_activation_modules_read_their_schema(act):
    import inspect

    s = act.op.schema
    for api, module in (("nnx", jnnx), ("linen", jnn)):
        cls = getattr(module, act.name)
        assert cls.__name__ == cls.__qualname__ == act.name
        assert cls.__module__ == f"jaxops.flax.{api}"
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.name not in ("parent", "name")]  # Linen's own fields
        assert [(p.name, p.default) for p in params] == [(a.name, a.default)
                                                        for a in s.attributes]
        doc = cls.__doc__
        assert doc.startswith(f":func:`jaxops.{s.function}` as a module: {s.doc.split()[0]}")
        assert f"{s.name}-{s.since_version}" in doc and f"``{s.gradient}``" in doc
        for a in s.attributes:
            assert f"  {a.name}: {a.type}, default {a.default!r}; {a.doc}" in doc
        if act.flax is not None:
            assert f"See also: ``flax.{api}." in doc  # Flax's counterpart
        module = cls()
        for a in s.attributes:
            assert getattr(module, a.name) == a.default


def test_activation_modules_check_attributes_when_built():
    for module in (jnnx, jnn):
        with pytest.raises(ValueError, match=r"jaxops.relu_n: attribute 'n': must be > 0"):
            module.ReluN(n=0.0)
        with pytest.raises(TypeError, match=r"jaxops.softmax: attribute 'axis' must be an int"):
            module.Softmax(axis=1.5)
        with pytest.raises(TypeError, match="alpha"):
            module.ReluN(alpha=0.1)
    with pytest.raises(TypeError, match=r"jaxops.flax.nnx.Tanh\(\): .*positional"):
        jnnx.Tanh(1.0)
    assert jnnx.ReluN(2.0).n == 2.0 and jnn.ReluN(2.0).n == 2.0  # positional, as before


def test_module_for_a_user_op(user_ops):
    squareplus, _ = user_ops
    x, w = _x(), _weights((4, 6))
    want = squareplus(x, b=1.0, scale=2.0)
    Nnx, Linen = jnnx.module_for(squareplus), jnn.module_for(squareplus, "Squareplus")
    assert Nnx.__name__ == "FlaxTestSquareplus" and Linen.__name__ == "Squareplus"
    assert "``flax_test_squareplus`` as a module" in Nnx.__doc__
    assert "scale: float, required." in Nnx.__doc__ and "b: float, default 4.0." in Nnx.__doc__
    assert "JAX's derivative" in Nnx.__doc__  # no registered gradient
    np.testing.assert_array_equal(Nnx(1.0, scale=2.0)(x), want)
    np.testing.assert_array_equal(Linen(b=1.0, scale=2.0).apply({}, x), want)
    with pytest.raises(TypeError, match="scale"):  # required, and keyword-only after b=4.0
        Nnx(1.0)
    with pytest.raises(TypeError):
        Linen(1.0, 2.0)
    want_dx = jax.grad(lambda x: jnp.sum(squareplus(x, b=1.0, scale=2.0) * w))(x)
    module = Nnx(b=1.0, scale=2.0)
    dx = nnx.grad(lambda m, x: jnp.sum(m(x) * w), argnums=1)(module, x)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)
    model = nnx.Sequential(module, jnnx.Tanh())
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), jnp.tanh(want), rtol=1e-6)


def test_module_for_refuses_what_is_not_an_activation(user_ops):
    _, affine = user_ops
    for module in (jnnx, jnn):
        with pytest.raises(TypeError, match=r"FlaxTestAffine has 2 inputs \(x, w\).*PReLU"):
            module.module_for(affine)
        with pytest.raises(TypeError, match="PRelu has 2 inputs"):
            module.module_for(jo.prelu)
        with pytest.raises(TypeError, match="expected a jaxops op"):
            module.module_for(jnp.tanh)


def test_module_for_refuses_an_attribute_that_shadows_flax():
    @jo.defop(name="FlaxTestNamed", domain="tests.flax")
    def flax_test_named(x, *, name="a", train=True):
        return x

    try:
        with pytest.raises(ValueError, match=r"'name' would shadow flax.linen.Module.name"):
            jnn.module_for(flax_test_named)
        with pytest.raises(ValueError, match=r"'train' would shadow flax.nnx.Module.train"):
            jnnx.module_for(flax_test_named)
    finally:
        jo.schema.unregister("FlaxTestNamed")


# -------------------------------------------------------------------------------- PReLU

def _prelu_ref(x, slope, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    s = np.asarray(slope, np.float64).reshape(shape)
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, x, s * x), np.where(x < 0, x, 0.0)  # y and dy/dslope per element


@pytest.mark.parametrize(("shape", "axis"), [((5, 3), -1), ((2, 3, 4), 1), ((2, 4, 4, 3), -1)])
def test_prelu_per_channel_values_and_slope_gradient(shape, axis):
    x, w = _x(shape), _weights(shape)
    c = shape[axis]
    slopes = jnp.linspace(0.1, 0.5, c)
    model = jnnx.PReLU(c, axis=axis)
    assert model.slope.shape == (c,) and model.slope.dtype == jnp.float32
    np.testing.assert_array_equal(model.slope[...], np.full(c, 0.01, np.float32))
    model.slope[...] = slopes
    y_ref, dy_ds = _prelu_ref(x, slopes, axis)
    reduce = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    ds_ref = (np.asarray(w, np.float64) * dy_ds).sum(axis=reduce)

    np.testing.assert_allclose(model(x), y_ref, rtol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) * w))(model)
    assert grads["slope"].shape == (c,)
    np.testing.assert_allclose(grads["slope"][...], ds_ref, rtol=1e-5, atol=1e-5)

    lin = jnn.PReLU(num_features=None, axis=axis)
    params = lin.init(jax.random.key(0), x)["params"]
    assert params["slope"].shape == (c,)
    params = {"slope": slopes}
    np.testing.assert_allclose(lin.apply({"params": params}, x), y_ref, rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: jnp.sum(lin.apply({"params": p}, x) * w)))(params)
    np.testing.assert_allclose(g["slope"], ds_ref, rtol=1e-5, atol=1e-5)


def test_prelu_with_one_slope_matches_flax_prelu():
    x, w = _x((4, 6)), _weights((4, 6))
    ours, theirs = jnnx.PReLU(), nnx.PReLU()
    assert ours.slope.shape == (1,) and theirs.negative_slope.shape == ()
    ours.slope[...] = jnp.array([-0.3])  # a negative slope: Y no longer tells X's sign
    theirs.negative_slope[...] = jnp.array(-0.3)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6)
    g_ours = nnx.grad(lambda m: jnp.sum(m(x) * w))(ours)["slope"][...]
    g_theirs = nnx.grad(lambda m: jnp.sum(m(x) * w))(theirs)["negative_slope"][...]
    np.testing.assert_allclose(g_ours, g_theirs.reshape(1), rtol=1e-5)

    lin = jnn.PReLU()
    variables = lin.init(jax.random.key(0), x)
    flax_vars = nn.PReLU().init(jax.random.key(0), x)
    assert variables["params"]["slope"].shape == (1,)
    np.testing.assert_allclose(lin.apply(variables, x), nn.PReLU().apply(flax_vars, x),
                               rtol=1e-6)


def test_prelu_under_nnx_jit_and_vmap_and_bfloat16():
    x = _x((4, 3))
    model = jnnx.PReLU(3)
    model.slope[...] = jnp.array([0.1, 0.2, 0.3])
    want = model(x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), want, rtol=1e-6)
    rows = nnx.vmap(lambda m, r: m(r), in_axes=(None, 0))(model, x)
    np.testing.assert_allclose(rows, want, rtol=1e-6)
    y16 = model(x.astype(jnp.bfloat16))  # the float32 slope meets the input's dtype
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), want, rtol=1e-2, atol=1e-2)


def test_prelu_bad_shapes_say_what_to_do():
    with pytest.raises(ValueError, match=r"num_features=3.*4 features on axis 1"):
        jnnx.PReLU(3)(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        jnnx.PReLU(3, axis=2)(jnp.ones((2, 3)))


# ---------------------------------------------------------------------------- BatchNorm
# Flax's BatchNorm with ONNX's momentum and epsilon.  Flax's default variance is
# E[x^2] - E[x]^2 (use_fast_variance=True); with use_fast_variance=False it is the two-pass
# population variance, the same quantity as jaxops's, so the comparison can be tight.
FLAX_BN = {"momentum": 0.9, "epsilon": 1e-5, "use_fast_variance": False}
BN_TOL = {"rtol": 2e-5, "atol": 2e-5}


def _batches(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    # per-channel offsets and scales, so that wrong axes or stale statistics show
    c = shape[-1]
    return [jnp.asarray((rng.normal(size=shape) * rng.uniform(0.5, 3, c)
                         + rng.uniform(-4, 4, c)).astype(np.float32)) for _ in range(n)]


def _stats(module):
    return np.asarray(module.mean[...]), np.asarray(module.var[...])


@pytest.mark.parametrize(("shape", "axis"), [((16, 4), -1), ((8, 5, 3), -1), ((4, 3, 5, 5), 1)])
def test_nnx_batch_norm_matches_flax_train_and_eval(shape, axis):
    batches = _batches(shape)
    if axis == 1:  # channels first: move the per-channel structure onto axis 1
        batches = [jnp.moveaxis(b, -1, 1) for b in batches]
    c = batches[0].shape[axis]
    ours = jnnx.BatchNorm(c, axis=axis)
    theirs = nnx.BatchNorm(c, axis=axis, rngs=nnx.Rngs(0), **FLAX_BN)
    for p in (ours, theirs):  # non-trivial affine parameters
        p.scale[...] = jnp.linspace(0.5, 2.0, c)
        p.bias[...] = jnp.linspace(-1.0, 1.0, c)
    for x in batches:  # training: batch statistics, running statistics updated
        np.testing.assert_allclose(ours(x), theirs(x), **BN_TOL)
        for a, b in zip(_stats(ours), _stats(theirs), strict=True):
            np.testing.assert_allclose(a, b, **BN_TOL)
    assert not np.allclose(_stats(ours)[0], 0.0)  # the running mean moved
    ours.eval(), theirs.eval()
    before = _stats(ours)
    x = batches[0] + 1.0
    np.testing.assert_allclose(ours(x), theirs(x), **BN_TOL)
    for a, b in zip(before, _stats(ours), strict=True):
        np.testing.assert_array_equal(a, b)  # inference leaves the statistics alone


def test_nnx_batch_norm_defaults_and_flax_fast_variance():
    ours = jnnx.BatchNorm(3)
    assert (ours.momentum, ours.epsilon, ours.axis, ours.use_running_average) == (
        0.9, 1e-5, -1, False)
    theirs = nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))  # Flax's default variance
    for x in _batches((32, 3)):
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_stats(ours)[1], _stats(theirs)[1], rtol=1e-4)
    assert set(nnx.state(ours, nnx.BatchStat).keys()) == {"mean", "var"}
    assert set(nnx.state(ours, nnx.Param).keys()) == {"scale", "bias"}


@pytest.mark.parametrize(("use_scale", "use_bias"), [(False, True), (True, False)])
def test_nnx_batch_norm_without_scale_or_bias(use_scale, use_bias):
    x = _batches((10, 4))[0]
    kw = {"use_scale": use_scale, "use_bias": use_bias}
    ours = jnnx.BatchNorm(4, **kw)
    theirs = nnx.BatchNorm(4, rngs=nnx.Rngs(0), **kw, **FLAX_BN)
    assert set(nnx.state(ours, nnx.Param).keys()) == set(nnx.state(theirs, nnx.Param).keys())
    np.testing.assert_allclose(ours(x), theirs(x), **BN_TOL)


def test_nnx_batch_norm_mode_switches():
    x = _batches((6, 2))[0]
    model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnnx.BatchNorm(2))
    bn = model.layers[1]
    model.eval()
    assert bn.use_running_average is True
    y_eval = model(x)
    model.train()
    assert bn.use_running_average is False
    y_train = model(x)
    assert not np.allclose(y_eval, y_train)
    np.testing.assert_allclose(np.mean(np.asarray(y_train), 0), 0.0, atol=1e-5)
    view = nnx.view(model, use_running_average=True)
    assert view.layers[1].use_running_average is True and bn.use_running_average is False
    before = _stats(bn)
    h = model.layers[0](x)
    y_call = bn(h, use_running_average=True)  # the call argument wins over the attribute
    np.testing.assert_array_equal(_stats(bn)[0], before[0])
    np.testing.assert_allclose(y_call, view.layers[1](h), rtol=1e-6)
    with pytest.raises(ValueError, match=r"use_running_average is None.*model\.train\(\)"):
        jnnx.BatchNorm(2, use_running_average=None)(x)
    with pytest.raises(ValueError, match="num_features=3"):
        jnnx.BatchNorm(3)(x)


def test_nnx_batch_norm_gradients_match_flax():
    x = _batches((12, 3))[0]
    w = _weights((12, 3))
    ours, theirs = jnnx.BatchNorm(3), nnx.BatchNorm(3, rngs=nnx.Rngs(0), **FLAX_BN)

    def loss(m, x):
        return jnp.sum(m(x) * w)

    for model in (ours, theirs):
        model.scale[...] = jnp.array([0.5, 1.0, 2.0])
    g_ours, dx_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
    g_theirs, dx_theirs = nnx.grad(loss, argnums=(0, 1))(theirs, x)
    assert set(g_ours.keys()) == {"scale", "bias"}  # statistics are not differentiated
    for k in ("scale", "bias"):
        np.testing.assert_allclose(g_ours[k][...], g_theirs[k][...], **BN_TOL)
    np.testing.assert_allclose(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(dx_ours)).max() > 0.1  # not a vacuous comparison


class _Net(nnx.Module):
    def __init__(self, bn, *, rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.bn = bn
        self.act = jnnx.ReLU()
        self.out = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.act(self.bn(self.linear(x))))


def _train_nnx(model, x, t, steps=8):
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, t):
        loss, grads = nnx.value_and_grad(lambda m: jo.mse(m(x), t))(model)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer, x, t)) for _ in range(steps)]


def test_nnx_train_steps_with_optax_match_flax_batch_norm():
    x = _batches((32, 3), n=1)[0]
    t = jnp.sum(x, axis=1, keepdims=True)
    ours = _Net(jnnx.BatchNorm(4), rngs=nnx.Rngs(0))
    theirs = _Net(nnx.BatchNorm(4, rngs=nnx.Rngs(1), **FLAX_BN), rngs=nnx.Rngs(0))
    losses = _train_nnx(ours, x, t)
    np.testing.assert_allclose(losses, _train_nnx(theirs, x, t), rtol=1e-4)
    assert losses[-1] < 0.2 * losses[0]
    for a, b in zip(_stats(ours.bn), _stats(theirs.bn), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(_stats(ours.bn)[1], 1.0)  # the running variance moved
    np.testing.assert_allclose(ours.bn.scale[...], theirs.bn.scale[...], rtol=1e-4, atol=1e-5)
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_batch_norm_bfloat16_input_keeps_float32_statistics():
    x = _batches((32, 3))[0]
    bn32, bn16 = jnnx.BatchNorm(3), jnnx.BatchNorm(3)
    y32, y16 = bn32(x), bn16(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and bn16.mean.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(_stats(bn16)[0], _stats(bn32)[0], rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------ Linen BatchNorm

@pytest.mark.parametrize(("shape", "axis"), [((16, 4), -1), ((4, 3, 5, 5), 1)])
def test_linen_batch_norm_matches_flax_train_and_eval(shape, axis):
    batches = _batches(shape)
    if axis == 1:
        batches = [jnp.moveaxis(b, -1, 1) for b in batches]
    ours, theirs = jnn.BatchNorm(axis=axis), nn.BatchNorm(axis=axis, **FLAX_BN)
    v_ours = ours.init(jax.random.key(0), batches[0], use_running_average=False)
    v_theirs = theirs.init(jax.random.key(0), batches[0], use_running_average=False)
    # Flax's variable names and shapes, and init does not move the statistics
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_theirs)
    np.testing.assert_array_equal(v_ours["batch_stats"]["mean"], 0.0)
    c = batches[0].shape[axis]
    params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1.0, 1.0, c)}
    v_ours = v_theirs = {"params": params, "batch_stats": v_ours["batch_stats"]}

    apply_ours = jax.jit(partial(ours.apply, use_running_average=False, mutable=["batch_stats"]))
    apply_theirs = jax.jit(partial(theirs.apply, use_running_average=False,
                                   mutable=["batch_stats"]))
    for x in batches:
        y_ours, up_ours = apply_ours(v_ours, x)
        y_theirs, up_theirs = apply_theirs(v_theirs, x)
        np.testing.assert_allclose(y_ours, y_theirs, **BN_TOL)
        for k in ("mean", "var"):
            np.testing.assert_allclose(up_ours["batch_stats"][k], up_theirs["batch_stats"][k],
                                       **BN_TOL)
        v_ours = {"params": params, **up_ours}
        v_theirs = {"params": params, **up_theirs}
    assert not np.allclose(v_ours["batch_stats"]["mean"], 0.0)
    x = batches[0] + 1.0
    np.testing.assert_allclose(ours.apply(v_ours, x, use_running_average=True),
                               theirs.apply(v_theirs, x, use_running_average=True), **BN_TOL)
    # the same variables work in both: the names and layout are Flax's
    np.testing.assert_allclose(ours.apply(v_theirs, x, use_running_average=True),
                               theirs.apply(v_ours, x, use_running_average=True), **BN_TOL)


def test_linen_batch_norm_field_or_call_argument():
    x = _batches((8, 2))[0]
    fixed = jnn.BatchNorm(use_running_average=True)
    variables = fixed.init(jax.random.key(0), x)
    assert "batch_stats" in variables and fixed.momentum == 0.9 and fixed.epsilon == 1e-5
    np.testing.assert_allclose(fixed.apply(variables, x), x / np.sqrt(1 + 1e-5), rtol=1e-6)
    with pytest.raises(ValueError, match="use_running_average"):
        fixed.apply(variables, x, use_running_average=False)  # both set: Flax's merge rule
    with pytest.raises(ValueError, match="use_running_average"):
        jnn.BatchNorm().init(jax.random.key(0), x)  # neither set


def test_linen_train_steps_with_optax_update_stats():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.Dense(4)(x)
            x = jnn.BatchNorm(use_running_average=not train)(x)
            x = jnn.PReLU(num_features=None, negative_slope_init=0.25)(x)
            return nn.Dense(1)(x)

    x = _batches((32, 3), n=1)[0]
    net = Net()
    variables = net.init(jax.random.key(0), x, train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, x):
        t = jnp.sum(x, axis=1, keepdims=True)

        def loss_fn(p):
            y, updates = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
            return jo.mse(y, t), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    losses = []
    for _ in range(8):
        params, stats, opt_state, loss = step(params, stats, opt_state, x)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    bn_stats = stats["BatchNorm_0"]
    assert not np.allclose(bn_stats["mean"], 0.0) and not np.allclose(bn_stats["var"], 1.0)
    assert params["PReLU_0"]["slope"].shape == (4,)
    assert not np.allclose(params["PReLU_0"]["slope"], 0.25)  # the slope learned


def test_nnx_batch_norm_under_nnx_vmap_like_flax():
    """Inference under nnx.vmap over an outer axis (module broadcast): each slice is
    normalized with the running statistics, as flax's own BatchNorm does, and parameter
    gradients through the vmap agree with flax's."""
    x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, (3, 8, 4)), jnp.float32)
    ours = jnnx.BatchNorm(4)
    theirs = nnx.BatchNorm(4, rngs=nnx.Rngs(0), **FLAX_BN)
    for m in (ours, theirs):
        m(x[0])  # one training step: non-trivial running statistics
        m.eval()
    got = nnx.vmap(lambda m, g: m(g), in_axes=(None, 0))(ours, x)
    want = nnx.vmap(lambda m, g: m(g), in_axes=(None, 0))(theirs, x)
    np.testing.assert_allclose(got, want, **BN_TOL)
    np.testing.assert_allclose(got, jnp.stack([ours(g) for g in x]), rtol=1e-6, atol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(
        nnx.vmap(lambda m, g: m(g), in_axes=(None, 0))(m, x) ** 2))(ours)
    flax_grads = nnx.grad(lambda m: jnp.sum(
        nnx.vmap(lambda m, g: m(g), in_axes=(None, 0))(m, x) ** 2))(theirs)
    np.testing.assert_allclose(grads.scale[...], flax_grads.scale[...], rtol=1e-5)
    np.testing.assert_allclose(grads.bias[...], flax_grads.bias[...], rtol=1e-5)


def test_batch_norm_without_scale_keeps_param_dtype():
    # the missing scale (or bias) stands in with param_dtype, so it matches the other one
    x = jnp.ones((4, 3))
    nnx_bn = jnnx.BatchNorm(3, use_scale=False, param_dtype=jnp.bfloat16)
    assert nnx_bn(x).dtype == jnp.float32
    layer = jnn.BatchNorm(use_running_average=True, use_bias=False, param_dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    assert variables["params"]["scale"].dtype == jnp.bfloat16
    assert layer.apply(variables, x).dtype == jnp.float32


def test_batch_norm_large_mean_small_std_where_flax_fast_variance_fails():
    """A channel with mean 1e4 and std 1e-2: our two-pass variance keeps y to what a float32
    mean can hold (half an ulp of 1e4, 4.9e-4, over the std: measured 0.045); flax's default
    E[x^2] - E[x]^2 loses the variance (measured error 8.4)."""
    x = (1e4 + 1e-2 * np.random.default_rng(0).normal(size=(256, 4))).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    ours = np.max(np.abs(np.asarray(jnnx.BatchNorm(4)(x), np.float64) - want))
    fast = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))  # use_fast_variance=True
    theirs = np.max(np.abs(np.asarray(fast(x), np.float64) - want))
    mean_rounding = 0.5 * np.spacing(np.float32(1e4)) / x64.std(0).min()
    assert ours < 1.1 * mean_rounding and theirs > 1.0, (ours, mean_rounding, theirs)


# ------------------------------------------------- LayerNorm, RMSNorm, GroupNorm (both APIs)
# Flax's layers with use_fast_variance=False compute the same two-pass population variance
# as jaxops, so the comparison is tight; with Flax's default (E[x^2] - E[x]^2) it agrees to
# float32 cancellation on these well-scaled inputs.
NORM_TOL = {"rtol": 2e-5, "atol": 2e-5}


def _norm_pairs(c):
    """(name, ours nnx, theirs nnx, ours linen, theirs linen) with non-default settings that
    both understand; Flax's fast variance off."""
    exact = {"use_fast_variance": False}
    return [
        ("LayerNorm", jnnx.LayerNorm(c), nnx.LayerNorm(c, rngs=nnx.Rngs(0), **exact),
         jnn.LayerNorm(), nn.LayerNorm(**exact)),
        ("LayerNorm-eps", jnnx.LayerNorm(c, epsilon=1e-3, use_bias=False),
         nnx.LayerNorm(c, epsilon=1e-3, use_bias=False, rngs=nnx.Rngs(0), **exact),
         jnn.LayerNorm(epsilon=1e-3, use_bias=False),
         nn.LayerNorm(epsilon=1e-3, use_bias=False, **exact)),
        ("RMSNorm", jnnx.RMSNorm(c), nnx.RMSNorm(c, rngs=nnx.Rngs(0)), jnn.RMSNorm(),
         nn.RMSNorm()),
        ("GroupNorm", jnnx.GroupNorm(c, num_groups=2), nnx.GroupNorm(
            c, num_groups=2, rngs=nnx.Rngs(0), **exact), jnn.GroupNorm(num_groups=2),
         nn.GroupNorm(num_groups=2, **exact)),
        ("GroupNorm-size", jnnx.GroupNorm(c, num_groups=None, group_size=1),
         nnx.GroupNorm(c, num_groups=None, group_size=1, rngs=nnx.Rngs(0), **exact),
         jnn.GroupNorm(num_groups=None, group_size=1),
         nn.GroupNorm(num_groups=None, group_size=1, **exact)),
    ]


def _set_params(module, c):
    for name, values in (("scale", jnp.linspace(0.5, 2.0, c)), ("bias", jnp.linspace(-1, 1, c))):
        if getattr(module, name, None) is not None:
            getattr(module, name)[...] = values


_NORM_KINDS = ["layer", "layer_eps_nobias", "rms", "group", "group_size"]
# groups need spatial axes to have more than one or two elements (a group of 2 normalizes
# to +-1 whatever x is, and its dx is rounding noise)
_NORM_CASES = [pytest.param(shape, k, id=f"{_NORM_KINDS[k]}-{shape}")
               for shape in ((6, 4), (3, 5, 4), (2, 3, 3, 4)) for k in range(5)
               if len(shape) > 2 or not _NORM_KINDS[k].startswith("group")]


@pytest.mark.parametrize(("shape", "k"), _NORM_CASES)
def test_nnx_normalizations_match_flax_values_and_gradients(shape, k):
    c = shape[-1]
    name, ours, theirs, _, _ = _norm_pairs(c)[k]
    for m in (ours, theirs):
        _set_params(m, c)
    x = _batches(shape)[0]
    w = _weights(shape)
    np.testing.assert_allclose(ours(x), theirs(x), **NORM_TOL)

    def loss(m, x):
        return jnp.sum(m(x) * w)

    g_ours, dx_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
    g_theirs, dx_theirs = nnx.grad(loss, argnums=(0, 1))(theirs, x)
    assert set(g_ours.keys()) == set(g_theirs.keys())  # Flax's parameter names
    for key in g_ours.keys():
        np.testing.assert_allclose(g_ours[key][...], g_theirs[key][...], **NORM_TOL)
    np.testing.assert_allclose(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(dx_ours)).max() > 0.1  # not a vacuous comparison


@pytest.mark.parametrize("k", range(5), ids=["layer", "layer_eps_nobias", "rms", "group",
                                             "group_size"])
def test_linen_normalizations_match_flax_values_and_gradients(k):
    shape = (3, 5, 4)
    _, _, _, ours, theirs = _norm_pairs(shape[-1])[k]
    x, w = _batches(shape)[0], _weights(shape)
    v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_theirs)
    v_ours = jax.tree.map(lambda a: a + jnp.linspace(-0.5, 0.5, a.size).reshape(a.shape),
                          v_ours)
    np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_ours, x), **NORM_TOL)

    def loss(module):
        return lambda v, x: jnp.sum(module.apply(v, x) * w)

    g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(v_ours, x)
    g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(v_ours, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_normalizations_default_to_flax_epsilon_and_fast_variance_agrees_loosely():
    x = _batches((16, 4, 8))[0]
    for ours, theirs in ((jnnx.LayerNorm(8), nnx.LayerNorm(8, rngs=nnx.Rngs(0))),
                         (jnnx.GroupNorm(8, num_groups=2),
                          nnx.GroupNorm(8, num_groups=2, rngs=nnx.Rngs(0)))):
        assert ours.epsilon == theirs.epsilon == 1e-6
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    assert jnnx.RMSNorm(8).epsilon == jnn.RMSNorm().epsilon == nn.RMSNorm().epsilon


def test_layer_norm_over_two_trailing_axes_and_its_refusals():
    x = _batches((2, 3, 4))[0]
    ours = jnnx.LayerNorm(12, reduction_axes=(1, 2), feature_axes=(1, 2))
    theirs = nnx.LayerNorm(12, reduction_axes=(1, 2), feature_axes=(1, 2),
                           use_fast_variance=False, rngs=nnx.Rngs(0))
    for m in (ours, theirs):
        m.scale[...] = jnp.linspace(0.5, 2, 12)
    np.testing.assert_allclose(ours(x), theirs(x), **NORM_TOL)
    with pytest.raises(ValueError, match=r"reduction_axes=\(1,\) are not the trailing axes .* "
                                         r"pass reduction_axes=\(1, 2\)"):
        jnnx.LayerNorm(3, reduction_axes=(1,), feature_axes=1)(x)
    with pytest.raises(ValueError, match=r"built for 5 features, got an input of shape "
                                         r"\(2, 3, 4\) with 4 on the feature axes"):
        jnnx.LayerNorm(5)(x)
    with pytest.raises(ValueError, match="give exactly one of num_groups and group_size"):
        jnnx.GroupNorm(4, num_groups=2, group_size=2)
    with pytest.raises(ValueError, match=r"num_groups=3 must divide num_features=4"):
        jnnx.GroupNorm(4, num_groups=3)
    with pytest.raises(ValueError, match="a custom initializer needs a key: pass rngs="):
        jnnx.LayerNorm(4, scale_init=nnx.initializers.normal())
    layer = jnnx.LayerNorm(4, scale_init=nnx.initializers.normal(), rngs=nnx.Rngs(3))
    assert not np.allclose(layer.scale[...], 1.0)


def test_normalizations_keep_the_input_dtype_and_float32_params():
    x = _batches((4, 8))[0].astype(jnp.bfloat16)
    for layer in (jnnx.LayerNorm(8), jnnx.RMSNorm(8), jnnx.GroupNorm(8, num_groups=2)):
        y = layer(x)
        assert y.dtype == jnp.bfloat16 and layer.scale[...].dtype == jnp.float32
        want = layer(x.astype(jnp.float32))
        np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2, atol=1e-2)
        g = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(layer)
        assert g["scale"][...].dtype == jnp.float32


class _Block(nnx.Module):
    """A transformer-style block: RMSNorm -> Linear -> LayerNorm -> Linear -> GroupNorm."""

    def __init__(self, norms, *, rngs):
        self.norms = nnx.List(norms)
        self.lin1 = nnx.Linear(8, 8, rngs=rngs)
        self.lin2 = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
        rms, ln, gn = self.norms
        return gn(self.lin2(jax.nn.gelu(ln(self.lin1(rms(x))))))


def test_nnx_training_steps_with_optax_match_flax_norms():
    ours = _Block([jnnx.RMSNorm(8), jnnx.LayerNorm(8), jnnx.GroupNorm(8, num_groups=4)],
                  rngs=nnx.Rngs(0))
    exact = {"use_fast_variance": False, "rngs": nnx.Rngs(1)}
    theirs = _Block([nnx.RMSNorm(8, rngs=nnx.Rngs(1)), nnx.LayerNorm(8, **exact),
                     nnx.GroupNorm(8, num_groups=4, **exact)], rngs=nnx.Rngs(0))
    x = _batches((16, 4, 8))[0]
    target = jnp.sin(x)
    losses = {key: _train_nnx(model, x, target, steps=5)
              for key, model in (("ours", ours), ("theirs", theirs))}
    np.testing.assert_allclose(losses["ours"], losses["theirs"], rtol=1e-4)
    assert losses["ours"][-1] < losses["ours"][0]


def test_linen_sequential_of_normalizations_trains():
    model = nn.Sequential([nn.Dense(8), jnn.LayerNorm(), nn.Dense(8), jnn.RMSNorm(),
                           jnn.GroupNorm(num_groups=2)])
    x = _batches((16, 8))[0]
    params = model.init(jax.random.key(0), x)
    assert set(params["params"]["layers_1"]) == {"scale", "bias"}
    assert set(params["params"]["layers_3"]) == {"scale"}
    opt = optax.sgd(0.1)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - 0.5) ** 2))(params)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(5):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]

# ------------------------------------------------------------------------------ Dropout

def test_nnx_dropout_draws_flax_masks_from_the_same_rngs():
    from jaxops.flax import nnx as jnnx

    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    ours, theirs = (cls(0.3, rngs=nnx.Rngs(dropout=5)) for cls in (jnnx.Dropout, nnx.Dropout))
    for _ in range(3):  # the streams advance alike: call after call, the same masks
        np.testing.assert_array_equal(ours(x), theirs(x))
    key = jax.random.key(9)
    np.testing.assert_array_equal(ours(x, rngs=key), theirs(x, rngs=key))
    stream = nnx.Rngs(dropout=1)
    np.testing.assert_array_equal(ours(x, rngs=nnx.Rngs(dropout=1)), theirs(x, rngs=stream))
    np.testing.assert_array_equal(ours(x, deterministic=True), x)
    np.testing.assert_array_equal(jnnx.Dropout(1.0, rngs=nnx.Rngs(0))(x), jnp.zeros_like(x))
    with pytest.raises(TypeError, match="no rngs were given"):
        jnnx.Dropout(0.5)(x)
    with pytest.raises(ValueError, match=r"attribute 'rate': must be in \[0, 1\]"):
        jnnx.Dropout(2.0)


def test_linen_dropout_draws_flax_masks_from_the_same_rngs():
    from jaxops.flax import linen as jnn

    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
    rngs = {"dropout": jax.random.key(3)}
    for rate in (0.2, 0.7):
        ours = jnn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
        theirs = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(jnn.Dropout(0.5, deterministic=True).apply({}, x), x)
    # gradient: the mask scaled, as Flax's
    g = jax.grad(lambda x: jnn.Dropout(0.4).apply({}, x, deterministic=False,
                                                 rngs=rngs).sum())(x)
    want = jax.grad(lambda x: nn.Dropout(0.4).apply({}, x, deterministic=False,
                                                   rngs=rngs).sum())(x)
    np.testing.assert_allclose(g, want, rtol=1e-6)
