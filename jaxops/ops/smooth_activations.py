"""The activations of transformers and modern CNNs: GELU, SiLU/Swish, Softplus, the ELU family,
the hard (piecewise-linear) sigmoid and swish, Mish, LogSigmoid and GLU, each with its
gradient op.

Each op is one block: schema, XLA implementation, registered gradient, gradient op.  The
forward formulas are jax.nn's (or cheaper); a gradient op reads Y where Y gives the derivative
without a transcendental (the ELU family, HardSigmoid: Caffe2's choice, so the forward may
run in place) and X elsewhere (GELU, SiLU, HardSwish, Mish, GLU, whose outputs are not
monotonic in X; Softplus and LogSigmoid, whose sigmoid is one division of the forward's
exp(-|x|) but an expm1 of Y).  A gradient op that reads X repeats the forward's subexpressions
verbatim, so that XLA computes them once when the forward and the backward are compiled
together (``jax.grad`` under ``jit``): no more work than autodiff of the jax.nn formula.

Numerics: half precision is computed in float32; every op's value and derivative stay finite
for large finite inputs of either sign (``softplus(1e4)``, ``mish(-1e4)``, ``gelu(-40)``,
``log_sigmoid(-1e4)``); the subexpressions that would overflow are bounded or use their
stable forms.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.schema import JAXOPS_DOMAIN, Attribute, OpSchema, Parameter, pointwise_cost

_X = (Parameter("X", doc="input tensor"),)
_Y = (Parameter("Y", doc="output tensor"),)
_Y_DY, _X_DY, _DX = schema.GRADIENT_OF_Y, schema.GRADIENT_OF_X, schema.DX


def _finite(v: float) -> str | None:
    return None if math.isfinite(v) else "must be finite."


def _gradient_schema(forward: OpSchema, formula: str, *, reads: str, attributes=(), flops=3,
                     transcendentals=0, cost_fn=None) -> OpSchema:
    """Schema of ``forward``'s gradient op, (X or Y, dY) -> dX, which may overwrite dY."""
    return OpSchema(
        name=f"{forward.name}Gradient", function=f"{forward.function}_gradient",
        domain=JAXOPS_DOMAIN,
        doc=f"dX = {formula}.", inputs=_Y_DY if reads == "Y" else _X_DY, outputs=_DX,
        allow_inplace=((1, 0),), attributes=tuple(attributes),
        cost_fn=cost_fn or pointwise_cost(flops=flops, transcendentals=transcendentals),
    )


# ---------------------------------------------------------------------------------- Gelu

def _approximation(v: str) -> str | None:
    if v in ("none", "tanh"):
        return None
    return "must be 'none' (the exact erf form) or 'tanh' (the tanh approximation)."


def _gelu_cost(exact: tuple[float, float], tanh: tuple[float, float]):
    """Pointwise cost by form, (flops, transcendentals) per element.  XLA (CPU, GPU) writes
    erfc as a rational approximation of ~60 flops around one exp, which the exact form's
    counts include: the cost is what runs, checked against ``cost_analysis()``."""
    def cost(in_avals, out_avals, *, approximate):
        flops, transcendentals = tanh if approximate == "tanh" else exact
        return pointwise_cost(flops, transcendentals)(in_avals, out_avals)

    return cost


_APPROXIMATE = Attribute("approximate", "string", "none", doc="'none' (erf) or 'tanh'",
                         check=_approximation)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TANH_K = math.sqrt(2 / math.pi)
_TANH_C = 0.044715

GELU = schema.register(OpSchema(
    name="Gelu", function="gelu", since_version=20, inherit_onnx_schema=True,
    doc="Y = X * Phi(X) (approximate='none'), or with Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + "
        "0.044715 x^3))) / 2 (approximate='tanh'), elementwise.",
    inputs=_X, outputs=_Y, gradient="GeluGradient", attributes=(_APPROXIMATE,),
    cost_fn=_gelu_cost(exact=(64, 1), tanh=(12, 1)),
    formula="x·Φ(x) (erf; or the tanh form)",
    convention="smooth",
))


def _gelu_tanh_parts(xf):
    """(e, a) of the tanh form, e = exp(-2|u|) with u = sqrt(2/pi) (x + 0.044715 x^3) and
    a = 1 where u >= 0 else e, so that (1 + tanh u) / 2 = a / (1 + e) and 1 - tanh^2 u =
    4 e / (1 + e)^2, without the cancellation of 1 +- tanh u where |tanh u| ~ 1 (x < 0 in
    the value, both signs in the derivative).  Written once for the forward and the gradient
    op (XLA then computes them once), each derived value used once: XLA:CPU does not fuse an
    exp or a division into several consumers, and would write it to memory."""
    # |x| <= 30 in u: beyond, |u| > 960 and e = 0 in float64 too, and x^3 would overflow
    # (float32 at 1e13), making e's derivative 0 * inf = NaN (gelu'' at 1e30)
    xc = jnp.clip(xf, -30.0, 30.0)
    u = _TANH_K * (xc + _TANH_C * (xc * xc * xc))
    e = jnp.exp(-2 * jnp.abs(u))
    return e, jnp.where(u >= 0, jnp.ones_like(e), e)


@defop(GELU)
def gelu(x: ArrayLike, *, approximate: str = "none") -> jax.Array:
    r"""Gaussian error linear unit.

    .. math:: \mathrm{gelu}(x) = x\,\Phi(x) = \frac{x}{2}\,\mathrm{erfc}\!\left(
              -\frac{x}{\sqrt 2}\right), \qquad
              \mathrm{gelu}'(x) = \Phi(x) + x\,\varphi(x), \qquad
              \mathrm{gelu}''(x) = (2 - x^2)\,\varphi(x)

    With ``approximate="tanh"``, :math:`\Phi(x) \approx \frac12\bigl(1 + \tanh(\sqrt{2/\pi}\,
    (x + 0.044715 x^3))\bigr)`, computed as :math:`\sigma(2u)` from :math:`e^{-2|u|}`,
    which keeps the relative accuracy for x < 0 that ``1 + tanh`` loses (jax.nn's form).
    The default is ONNX's (and PyTorch's) exact erf form; **jax.nn.gelu defaults to the
    tanh form** (``approximate=True``): ``jaxops.gelu(x)`` is ``jax.nn.gelu(x,
    approximate=False)``.  The erf form is computed as jax.nn does, with ``erfc(-x/sqrt 2)``,
    which keeps its relative accuracy for negative x (``gelu(-40)`` is -0, not NaN).  The
    gradient op reads X (gelu is not monotonic), so Gelu may not run in
    place.  Half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      approximate: ``"none"`` (exact) or ``"tanh"`` (static).

    Returns:
      ``gelu(x)``, same shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.gelu(jnp.array([-1.0, 0.0, 1.0]))
      Array([-0.15865527,  0.        ,  0.8413447 ], dtype=float32)
      >>> jax.grad(jaxops.gelu)(jnp.float32(0.0))
      Array(0.5, dtype=float32)

    References:
      ONNX Gelu-20; Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)" (2016).
    """
    xf = upcast(x)
    if approximate == "tanh":
        e, a = _gelu_tanh_parts(xf)
        y = xf * a / (1 + e)
    else:
        y = 0.5 * xf * jax.lax.erfc(-xf * _SQRT_HALF)
    return y.astype(x.dtype)


@gelu.defgrad
def _gelu_vjp(x, y, dy, *, approximate):
    return gelu_gradient(x, dy, approximate=approximate)


GELU_GRADIENT = schema.register(_gradient_schema(
    GELU, "dY * (Phi(X) + X phi(X)) (approximate='tanh': the tanh form's derivative)",
    reads="X", attributes=(_APPROXIMATE,), cost_fn=_gelu_cost(exact=(69, 2), tanh=(21, 1))))


@defop(GELU_GRADIENT)
def gelu_gradient(x: ArrayLike, dy: ArrayLike, *, approximate: str = "none") -> jax.Array:
    r"""Gradient op of :func:`gelu`, from its input: ``dy * (Phi(x) + x phi(x))``.

    ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``; for ``approximate="tanh"`` the derivative of the
    tanh form, ``(1 + t)/2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.gelu_gradient(jnp.array([0.0, 40.0, -40.0]), jnp.ones(3))
      Array([0.5, 1. , 0. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    if approximate == "tanh":
        e, a = _gelu_tanh_parts(xf)
        # x bounded where it multiplies e: beyond |x| = 30 e is 0, and x^2 would overflow
        # (0 * inf = NaN, in the value and in its derivative)
        xc = jnp.clip(xf, -30.0, 30.0)
        # a / (1 + e) + 2 sqrt(2/pi) x (1 + 3 c x^2) e / (1 + e)^2, over one division
        n = a * (1 + e) + (2 * _TANH_K) * (xc * e) * (1 + 3 * _TANH_C * (xc * xc))
        d = n / ((1 + e) * (1 + e))
    else:
        d = 0.5 * jax.lax.erfc(-xf * _SQRT_HALF) + xf * (
            _INV_SQRT_2PI * jnp.exp(-0.5 * (xf * xf)))
    return (dyf * d).astype(dy.dtype)


# ------------------------------------------------------------------------- Swish (SiLU)

SWISH = schema.register(OpSchema(
    name="Swish", function="silu", since_version=24, inherit_onnx_schema=True,
    doc="Y = X * sigmoid(alpha * X), elementwise (SiLU for alpha = 1).",
    inputs=_X, outputs=_Y, gradient="SwishGradient",
    attributes=(Attribute("alpha", "float", 1.0, doc="scale inside the sigmoid",
                          check=_finite),),
    cost_fn=pointwise_cost(flops=7, transcendentals=1),
    formula="x·σ(αx)",
    convention="smooth",
))


def _sigmoid_parts(z):
    """(e, a, b) with e = exp(-|z|), a = 1 where z >= 0 else e, b = e where z >= 0 else 1:
    sigmoid(z) = a / (1 + e) and sigmoid(-z) = b / (1 + e), each to its relative accuracy
    (no 1 - s cancellation where s ~ 1).  Written once for the forward and the gradient op,
    which XLA then computes once; the gradient op divides once (XLA:CPU does not fuse an exp
    or a division into several consumers, and would write it to memory)."""
    e = jnp.exp(-jnp.abs(z))
    one, positive = jnp.ones_like(e), z >= 0
    return e, jnp.where(positive, one, e), jnp.where(positive, e, one)


def _scaled(xf, alpha: float):
    return xf if alpha == 1.0 else alpha * xf


@defop(SWISH)
def silu(x: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Sigmoid linear unit (SiLU); Swish with a scale ``alpha`` inside the sigmoid.

    .. math:: \mathrm{silu}(x) = x\,\sigma(\alpha x), \qquad
              \mathrm{silu}'(x) = \sigma(\alpha x)\,\bigl(1 + \alpha x\,(1 - \sigma(\alpha x))
              \bigr)

    ``alpha`` is ONNX Swish-24's attribute (Ramachandran et al.'s beta); the default 1 is
    SiLU, ``jax.nn.silu`` and PyTorch's ``SiLU``, which have no such parameter.  Exported as
    ONNX ``Swish`` where the opset has it (24 on), else as ``Mul(X, Sigmoid(X))``.  The
    gradient op reads X; half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: the scale inside the sigmoid, a finite Python float (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.silu(jnp.array([-1e4, 0.0, 1.0]))
      Array([-0.       ,  0.       ,  0.7310586], dtype=float32)

    References:
      ONNX Swish-24; Elfwing et al., "Sigmoid-Weighted Linear Units" (2017); Ramachandran
      et al., "Searching for Activation Functions" (2017).
    """
    xf = upcast(x)
    e, a, _ = _sigmoid_parts(_scaled(xf, alpha))
    return (xf * a / (1 + e)).astype(x.dtype)


@silu.defgrad
def _silu_vjp(x, y, dy, *, alpha):
    return silu_gradient(x, dy, alpha=alpha)


SWISH_GRADIENT = schema.register(_gradient_schema(
    SWISH, "dY * s * (1 + alpha X (1 - s)), s = sigmoid(alpha X)", reads="X",
    attributes=SWISH.attributes, flops=12, transcendentals=1))


@defop(SWISH_GRADIENT)
def silu_gradient(x: ArrayLike, dy: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Gradient op of :func:`silu`, from its input: ``dy * s * (1 + alpha x (1 - s))`` with
    ``s = sigmoid(alpha x)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.silu_gradient(jnp.array([0.0, 1e4, -1e4]), jnp.ones(3))
      Array([ 0.5,  1. , -0. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    z = _scaled(xf, alpha)
    e, a, b = _sigmoid_parts(z)
    # s (1 + z (1 - s)) = a (1 + e + z b) / (1 + e)^2
    return (dyf * (a * (1 + e + z * b) / ((1 + e) * (1 + e)))).astype(dy.dtype)


# ------------------------------------------------------------------------------ Softplus

def _softplus(xf):
    """log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|), with the e^-|x| of
    :func:`_sigmoid_parts`, which the gradient op divides by (XLA computes it once)."""
    return jnp.maximum(xf, 0) + jnp.log1p(_sigmoid_parts(xf)[0])


SOFTPLUS = schema.register(OpSchema(
    name="Softplus", function="softplus", since_version=22, inherit_onnx_schema=True,
    doc="Y = ln(exp(X) + 1), elementwise.",
    inputs=_X, outputs=_Y, gradient="SoftplusGradient",
    cost_fn=pointwise_cost(flops=4, transcendentals=2),
    formula="ln(1 + eˣ)",
    convention="smooth",
))


@defop(SOFTPLUS)
def softplus(x: ArrayLike) -> jax.Array:
    r"""Softplus.

    .. math:: \mathrm{softplus}(x) = \ln(1 + e^x) = \max(x, 0) + \ln(1 + e^{-|x|}), \qquad
              \mathrm{softplus}'(x) = \sigma(x) = 1 - e^{-\mathrm{softplus}(x)}

    The second form never overflows (``softplus(1e4) = 1e4``, ``softplus(-1e4) = 0``).  The
    gradient op reads X, not Y as Caffe2's does: sigmoid(x) is then one division of the
    forward's :math:`e^{-|x|}` (XLA computes it once for both), where Y would need an
    ``expm1`` (measured on CPU: forward and backward 2x faster than from Y, 1.6x faster than
    autodiff of jax.nn.softplus).  So Softplus may not run in place.  Half precision is
    computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.softplus(jnp.array([-1e4, 0.0, 1e4]))
      Array([0.000000e+00, 6.931472e-01, 1.000000e+04], dtype=float32)
      >>> jax.grad(jaxops.softplus)(jnp.float32(1e4))
      Array(1., dtype=float32)

    References:
      ONNX Softplus-22; Caffe2 ``SoftplusOp`` / ``SoftplusGradientOp``; Dugas et al.,
      "Incorporating Second-Order Functional Knowledge for Better Option Pricing" (2001).
    """
    return _softplus(upcast(x)).astype(x.dtype)


@softplus.defgrad
def _softplus_vjp(x, y, dy):
    return softplus_gradient(x, dy)


SOFTPLUS_GRADIENT = schema.register(_gradient_schema(
    SOFTPLUS, "dY * sigmoid(X)", reads="X", flops=6, transcendentals=1))


@defop(SOFTPLUS_GRADIENT)
def softplus_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`softplus`, from its input: ``dy * sigmoid(x)``, as
    ``a / (1 + e)`` from ``e = exp(-|x|)`` (``a = 1`` for x >= 0, else ``e``).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.softplus_gradient(jnp.array([-1e4, 0.0, 1e4]), jnp.ones(3))
      Array([0. , 0.5, 1. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    e, a, _ = _sigmoid_parts(xf)
    return (dyf * a / (1 + e)).astype(dy.dtype)


# ----------------------------------------------------------------------------- Elu, Selu

def _nonnegative_alpha(op: str):
    def check(alpha: float) -> str | None:
        if math.isfinite(alpha) and alpha >= 0:
            return None
        return (f"must be finite and >= 0: {op}Gradient reads Y (as Caffe2's), and for a "
                "negative alpha Y no longer tells x > 0 from x <= 0. For a negative slope, "
                "write jnp.where(x > 0, x, alpha * jnp.expm1(x)).")

    return check


ELU = schema.register(OpSchema(
    name="Elu", function="elu", since_version=22, inherit_onnx_schema=True,
    doc="Y = X where X > 0, else alpha * (exp(X) - 1), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="EluGradient",
    attributes=(Attribute("alpha", "float", 1.0, doc="scale for x <= 0, >= 0",
                          check=_nonnegative_alpha("Elu")),),
    cost_fn=pointwise_cost(flops=3, transcendentals=1),
    formula="x if x > 0 else α(eˣ − 1)",
    convention="α at 0 (the x ≤ 0 side), elu''(0) = α",
))


@defop(ELU)
def elu(x: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Exponential linear unit.

    .. math:: \mathrm{elu}(x) = \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0
              \end{cases}, \qquad \mathrm{elu}'(x) = \begin{cases} 1 & x > 0 \\
              \alpha e^x = y + \alpha & x \le 0 \end{cases}

    At the kink x = 0 (where the two sides differ unless ``alpha = 1``) both derivatives take
    the ``x <= 0`` side: ``elu'(0) = alpha`` and ``elu''(0) = alpha``, as ``jax.nn.elu``
    (under ``jax.grad``) and PyTorch's ``elu_backward`` do.  The gradient op reads Y
    (Caffe2's ``EluGradient``: ``dy`` where ``y > 0``, else ``dy * (y + alpha)``), so Elu may
    run in place; that needs ``alpha >= 0`` (Y then has the sign of X), the one restriction
    on ONNX's attribute.  Half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: the scale of the negative side, a Python float >= 0 (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.elu(jnp.array([-1e4, -1.0, 2.0]))
      Array([-1.        , -0.63212055,  2.        ], dtype=float32)

    References:
      ONNX Elu-22; Caffe2 ``EluOp`` / ``EluGradientOp``; Clevert et al., "Fast and Accurate
      Deep Network Learning by Exponential Linear Units (ELUs)" (2015).
    """
    xf = upcast(x)
    # one select: the gradient is the registered op, so exp's overflow in the unselected
    # branch (x > 88) never meets a derivative
    return jnp.where(xf > 0, xf, alpha * jnp.expm1(xf)).astype(x.dtype)


@elu.defgrad
def _elu_vjp(x, y, dy, *, alpha):
    return elu_gradient(y, dy, alpha=alpha)


ELU_GRADIENT = schema.register(_gradient_schema(
    ELU, "dY where Y > 0, else dY * (Y + alpha) (Caffe2 EluGradient)", reads="Y",
    attributes=ELU.attributes, flops=3))


@defop(ELU_GRADIENT)
def elu_gradient(y: ArrayLike, dy: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Gradient op of :func:`elu`, from its output: ``dy`` where ``y > 0``, else
    ``dy * (y + alpha)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.elu_gradient(jnp.array([-0.5, 0.0, 2.0]), jnp.ones(3))
      Array([0.5, 1. , 1. ], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    return jnp.where(yf > 0, dyf, dyf * (yf + alpha)).astype(dy.dtype)


_SELU_ALPHA = 1.67326319217681884765625  # ONNX's defaults: the float32 roundings of
_SELU_GAMMA = 1.05070102214813232421875  # Klambauer et al.'s constants

_SELU_ATTRIBUTES = (
    Attribute("alpha", "float", _SELU_ALPHA, doc="scale of the exponential side, >= 0",
              check=_nonnegative_alpha("Selu")),
    Attribute("gamma", "float", _SELU_GAMMA, doc="overall scale", check=_finite),
)

SELU = schema.register(OpSchema(
    name="Selu", function="selu", since_version=22, inherit_onnx_schema=True,
    doc="Y = gamma * X where X > 0, else gamma * alpha * (exp(X) - 1), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="SeluGradient",
    attributes=_SELU_ATTRIBUTES,
    cost_fn=pointwise_cost(flops=4, transcendentals=1),
    formula="γ·x if x > 0 else γα(eˣ − 1)",
    convention="γα at 0 (the x ≤ 0 side), selu''(0) = γα",
))


@defop(SELU)
def selu(x: ArrayLike, *, alpha: float = _SELU_ALPHA, gamma: float = _SELU_GAMMA) -> jax.Array:
    r"""Scaled exponential linear unit.

    .. math:: \mathrm{selu}(x) = \gamma \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0
              \end{cases}, \qquad \mathrm{selu}'(x) = \begin{cases} \gamma & x > 0 \\
              \gamma \alpha e^x = y + \gamma\alpha & x \le 0 \end{cases}

    The defaults are ONNX's, the float32 roundings of the self-normalizing constants;
    ``jax.nn.selu`` uses the float64 values (the same in float32, 3e-8 apart in float64).
    At x = 0 the derivatives take the ``x <= 0`` side, ``selu'(0) = gamma * alpha`` (1.758),
    as ``jax.nn.selu`` and PyTorch do.  The gradient op reads Y (Caffe2's ``SeluGradient``),
    so Selu may run in place; ``alpha >= 0`` is required for that (any finite ``gamma``).

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: scale of the exponential side, a Python float >= 0 (static).
      gamma: overall scale, a finite Python float (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.selu(jnp.array([-1.0, 0.0, 1.0]))
      Array([-1.1113307,  0.       ,  1.050701 ], dtype=float32)

    References:
      ONNX Selu-22; Caffe2 ``SeluOp``; Klambauer et al., "Self-Normalizing Neural Networks"
      (2017).
    """
    xf = upcast(x)
    return jnp.where(xf > 0, gamma * xf, (gamma * alpha) * jnp.expm1(xf)).astype(x.dtype)


@selu.defgrad
def _selu_vjp(x, y, dy, *, alpha, gamma):
    return selu_gradient(y, dy, alpha=alpha, gamma=gamma)


SELU_GRADIENT = schema.register(_gradient_schema(
    SELU, "gamma * dY where X > 0 (read from Y's sign), else dY * (Y + gamma * alpha) "
    "(Caffe2 SeluGradient)", reads="Y", attributes=_SELU_ATTRIBUTES, flops=3))


@defop(SELU_GRADIENT)
def selu_gradient(y: ArrayLike, dy: ArrayLike, *, alpha: float = _SELU_ALPHA,
                  gamma: float = _SELU_GAMMA) -> jax.Array:
    r"""Gradient op of :func:`selu`, from its output: ``gamma * dy`` where ``x > 0``, else
    ``dy * (y + gamma * alpha)``.  ``x > 0`` is ``y > 0`` (``y < 0`` for a negative gamma).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.selu_gradient(jnp.array([0.0, 1.0]), jnp.ones(2))
      Array([1.7580993, 1.050701 ], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    positive = yf > 0 if gamma >= 0 else yf < 0
    # the saturated output -gamma alpha, as rounded to y's dtype: slope 0 there (in half
    # precision y + gamma alpha would leave the rounding error, 2.9e-4 in bfloat16)
    saturated = yf == upcast(jnp.asarray(-gamma * alpha, jnp.result_type(y)))
    slope = jnp.where(saturated, 0.0, yf + gamma * alpha)
    return jnp.where(positive, gamma * dyf, dyf * slope).astype(dy.dtype)


# ---------------------------------------------------------------------------------- Celu

def _nonzero(alpha: float) -> str | None:
    if math.isfinite(alpha) and alpha != 0:
        return None
    return "must be finite and nonzero (Celu divides by it)."


CELU = schema.register(OpSchema(
    name="Celu", function="celu", since_version=28, inherit_onnx_schema=True,
    doc="Y = max(0, X) + min(0, alpha * (exp(X / alpha) - 1)), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="CeluGradient",
    attributes=(Attribute("alpha", "float", 1.0, doc="nonzero", check=_nonzero),),
    cost_fn=pointwise_cost(flops=4, transcendentals=1),
    formula="x if x > 0 else α(e^(x/α) − 1)",
    convention="1 at 0 (C¹); celu''(0) = 1/α (the x ≤ 0 side)",
))


@defop(CELU)
def celu(x: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Continuously differentiable exponential linear unit.

    .. math:: \mathrm{celu}(x) = \max(0, x) + \min\bigl(0, \alpha (e^{x/\alpha} - 1)\bigr),
              \qquad \mathrm{celu}'(x) = \begin{cases} 1 & x > 0 \\ e^{x/\alpha}
              = 1 + y/\alpha & x \le 0 \end{cases}

    ``celu'`` is continuous (1 at 0 from both sides); ``celu''`` jumps at 0, where it takes
    the ``x <= 0`` side, ``1/alpha`` (``jax.nn.celu`` under ``jax.grad(jax.grad)`` gives
    ``1/(4 alpha)``, from the ties of its ``maximum``/``minimum``).  The gradient op reads Y,
    whose sign is X's for every nonzero alpha, so Celu may run in place.

    jaxops follows Celu-28, which takes every float type (Celu-12 took float32 only, with
    the same values); an export to an older opset writes the formula out in standard ops.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: a finite nonzero Python float (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.celu(jnp.array([-1.0, 0.0, 2.0]), alpha=2.0)
      Array([-0.78693867,  0.        ,  2.        ], dtype=float32)

    References:
      ONNX Celu-28 (Celu-12); Barron, "Continuously Differentiable Exponential Linear Units"
      (2017).
    """
    xf = upcast(x)
    return jnp.where(xf > 0, xf, alpha * jnp.expm1(xf / alpha)).astype(x.dtype)


@celu.defgrad
def _celu_vjp(x, y, dy, *, alpha):
    return celu_gradient(y, dy, alpha=alpha)


CELU_GRADIENT = schema.register(_gradient_schema(
    CELU, "dY where Y > 0, else dY * (1 + Y / alpha)", reads="Y",
    attributes=CELU.attributes, flops=4))


@defop(CELU_GRADIENT)
def celu_gradient(y: ArrayLike, dy: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Gradient op of :func:`celu`, from its output: ``dy`` where ``y > 0``, else
    ``dy * (1 + y / alpha)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.celu_gradient(jnp.array([-1.0, 0.0, 2.0]), jnp.ones(3), alpha=2.0)
      Array([0.5, 1. , 1. ], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    return jnp.where(yf > 0, dyf, dyf * (1 + yf / alpha)).astype(dy.dtype)


# -------------------------------------------------------------------------- HardSigmoid

_HS_ALPHA = Attribute("alpha", "float", 0.2, doc="slope", check=_finite)
_HS_BETA = Attribute("beta", "float", 0.5, doc="offset", check=_finite)

HARD_SIGMOID = schema.register(OpSchema(
    name="HardSigmoid", function="hard_sigmoid", since_version=22, inherit_onnx_schema=True,
    doc="Y = max(0, min(1, alpha * X + beta)), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="HardSigmoidGradient",
    attributes=(_HS_ALPHA, _HS_BETA),
    cost_fn=pointwise_cost(flops=4),
    formula="max(0, min(1, αx + β))",
    convention="0 at both corners",
))


@defop(HARD_SIGMOID)
def hard_sigmoid(x: ArrayLike, *, alpha: float = 0.2, beta: float = 0.5) -> jax.Array:
    r"""Hard sigmoid: the piecewise-linear sigmoid of ONNX and Caffe2.

    .. math:: \mathrm{hard\_sigmoid}(x) = \max(0, \min(1, \alpha x + \beta)), \qquad
              \mathrm{hard\_sigmoid}'(x) = \alpha\,[0 < \alpha x + \beta < 1]

    The defaults are ONNX's (``alpha = 0.2``); **jax.nn.hard_sigmoid** is
    ``relu6(x + 3) / 6``, i.e. ``alpha = 1/6, beta = 0.5`` (PyTorch's ``Hardsigmoid`` too):
    pass those for its values.  The derivative is 0 at both corners (``alpha x + beta`` = 0
    or 1), as ``jax.nn.hard_sigmoid`` and :func:`jaxops.clip` have it.  The gradient op reads
    Y, so HardSigmoid may run in place.  Half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: slope, a finite Python float (static).
      beta: offset, a finite Python float (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.hard_sigmoid(jnp.array([-3.0, 0.0, 1.0, 3.0]))
      Array([0. , 0.5, 0.7, 1. ], dtype=float32)

    References:
      ONNX HardSigmoid-22; Caffe2 ``HardSigmoidOp``; Courbariaux et al., "BinaryConnect"
      (2015).
    """
    xf = upcast(x)
    return jnp.minimum(jnp.maximum(alpha * xf + beta, 0), 1).astype(x.dtype)


@hard_sigmoid.defgrad
def _hard_sigmoid_vjp(x, y, dy, *, alpha, beta):
    return hard_sigmoid_gradient(y, dy, alpha=alpha)


HARD_SIGMOID_GRADIENT = schema.register(_gradient_schema(
    HARD_SIGMOID, "alpha * dY where 0 < Y < 1, else 0 (Caffe2 HardSigmoidGradient)",
    reads="Y", attributes=(_HS_ALPHA,), flops=3))


@defop(HARD_SIGMOID_GRADIENT)
def hard_sigmoid_gradient(y: ArrayLike, dy: ArrayLike, *, alpha: float = 0.2) -> jax.Array:
    r"""Gradient op of :func:`hard_sigmoid`, from its output: ``alpha * dy * [0 < y < 1]``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.hard_sigmoid_gradient(jnp.array([0.0, 0.5, 1.0]), jnp.ones(3))
      Array([0. , 0.2, 0. ], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    inside = (yf > 0) & (yf < 1)
    return jnp.where(inside, alpha * dyf, jnp.zeros_like(dyf)).astype(dy.dtype)


# ---------------------------------------------------------------------------- HardSwish

HARD_SWISH = schema.register(OpSchema(
    name="HardSwish", function="hard_swish", since_version=22, inherit_onnx_schema=True,
    doc="Y = X * max(0, min(1, X / 6 + 0.5)), elementwise.",
    inputs=_X, outputs=_Y, gradient="HardSwishGradient",
    cost_fn=pointwise_cost(flops=5),
    formula="x·max(0, min(1, x/6 + ½))",
    convention="0 at −3, 1 at 3 (PyTorch: −½, 3/2)",
))


@defop(HARD_SWISH)
def hard_swish(x: ArrayLike) -> jax.Array:
    r"""Hard swish: x times the hard sigmoid of slope 1/6.

    .. math:: \mathrm{hard\_swish}(x) = x \max\bigl(0, \min(1, \tfrac{x}{6} + \tfrac12)\bigr),
              \qquad \mathrm{hard\_swish}'(x) = \begin{cases} 0 & x \le -3 \\
              \tfrac{x}{3} + \tfrac12 & -3 < x < 3 \\ 1 & x \ge 3 \end{cases}

    At the kinks the derivative is that of the outer pieces, 0 at -3 and 1 at 3: the product
    rule with the hard sigmoid's derivative 0 at its corners, which is ``jax.nn.hard_swish``'s
    derivative too.  PyTorch's ``hardswish_backward`` takes the middle piece there (-1/2 at
    -3, 3/2 at 3).  The second derivative is 1/3 strictly between the kinks, else 0.  The
    gradient op reads X (hard swish is not monotonic), so HardSwish may not run in place.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.hard_swish(jnp.array([-4.0, 0.0, 1.5, 4.0]))
      Array([-0.   ,  0.   ,  1.125,  4.   ], dtype=float32)

    References:
      ONNX HardSwish-22; Howard et al., "Searching for MobileNetV3" (2019).
    """
    xf = upcast(x)
    return (xf * jnp.minimum(jnp.maximum(xf * (1 / 6) + 0.5, 0), 1)).astype(x.dtype)


@hard_swish.defgrad
def _hard_swish_vjp(x, y, dy):
    return hard_swish_gradient(x, dy)


HARD_SWISH_GRADIENT = schema.register(_gradient_schema(
    HARD_SWISH, "dY * (0 where X <= -3, X / 3 + 1/2 where -3 < X < 3, 1 where X >= 3)",
    reads="X", flops=5))


@defop(HARD_SWISH_GRADIENT)
def hard_swish_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`hard_swish`, from its input: ``dy`` times 0 for ``x <= -3``,
    ``x/3 + 1/2`` strictly between, 1 for ``x >= 3``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.hard_swish_gradient(jnp.array([-3.0, 0.0, 3.0]), jnp.ones(3))
      Array([0. , 0.5, 1. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    slope = jnp.where(xf >= 3, 1.0, jnp.where(xf > -3, xf * (1 / 3) + 0.5, 0.0))
    return (dyf * slope.astype(xf.dtype)).astype(dy.dtype)


# ---------------------------------------------------------------------------------- Mish

def _mish_parts(xf):
    """(e, N, D) with e = exp(-|x|) and tanh(softplus(x)) = N / D: with u = e^x,
    tanh(ln(1 + u)) = (u^2 + 2u) / (u^2 + 2u + 2), written in e (u = e for x < 0, 1/e for
    x >= 0) so that nothing overflows or cancels: N = 1 + 2e, D = N + 2e^2 for x >= 0;
    N = e (e + 2), D = N + 2 for x < 0.  One transcendental where jax.nn's formula has three;
    written once for the forward and the gradient op (XLA then computes them once)."""
    e = jnp.exp(-jnp.abs(xf))
    positive = xf >= 0
    n = jnp.where(positive, 1 + 2 * e, e * (e + 2))
    # 1 + 2e (1 + e), not N + 2 e^2: XLA rewrites exp(a) * exp(a) as a second exp(2a)
    return e, n, jnp.where(positive, 1 + 2 * e * (1 + e), n + 2)


MISH = schema.register(OpSchema(
    name="Mish", function="mish", since_version=22, inherit_onnx_schema=True,
    doc="Y = X * tanh(softplus(X)), elementwise.",
    inputs=_X, outputs=_Y, gradient="MishGradient",
    cost_fn=pointwise_cost(flops=15, transcendentals=1),
    formula="x·tanh(ln(1 + eˣ))",
    convention="smooth",
))


@defop(MISH)
def mish(x: ArrayLike) -> jax.Array:
    r"""Mish.

    .. math:: \mathrm{mish}(x) = x \tanh(\mathrm{softplus}(x)), \qquad
              \mathrm{mish}'(x) = t + x\,\sigma(x)\,(1 - t^2), \quad t = \tanh(\mathrm{softplus}
              (x))

    Computed as :math:`\tanh(\ln(1 + u)) = (u^2 + 2u)/(u^2 + 2u + 2)`, :math:`u = e^x`,
    written in :math:`e^{-|x|}`: one exponential (jax.nn's ``x * tanh(softplus(x))`` takes
    three) and no overflow or cancellation: ``mish(-1e4) = -0``, ``mish'(1e4) = 1``, and
    relative accuracy in the tails.  The gradient op reads X and repeats those
    subexpressions.  Half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.mish(jnp.array([-1e4, 0.0, 1.0]))
      Array([-0.       ,  0.       ,  0.8650984], dtype=float32)

    References:
      ONNX Mish-22; Misra, "Mish: A Self Regularized Non-Monotonic Activation Function"
      (2019).
    """
    xf = upcast(x)
    _, n, d = _mish_parts(xf)
    return (xf * n / d).astype(x.dtype)


@mish.defgrad
def _mish_vjp(x, y, dy):
    return mish_gradient(x, dy)


MISH_GRADIENT = schema.register(_gradient_schema(
    MISH, "dY * (t + X sigmoid(X) (1 - t^2)), t = tanh(softplus(X))", reads="X", flops=23,
    transcendentals=1))


@defop(MISH_GRADIENT)
def mish_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`mish`, from its input: ``dy * (t + x sigmoid(x) (1 - t^2))``
    with ``t = tanh(softplus(x))``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.mish_gradient(jnp.array([0.0, 1e4, -1e4]), jnp.ones(3))
      Array([0.6, 1. , 0. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    e, n, d = _mish_parts(xf)
    # t + x sigmoid(x) (1 - t^2), t = N / D: sigmoid(x) (1 - t^2) = 4 (1 + e) g / D^2 with
    # g = e^2 (x >= 0) or e (x < 0); over one division
    g = e * jnp.where(xf >= 0, e, jnp.ones_like(e))
    return (dyf * ((n * d + 4 * xf * (1 + e) * g) / (d * d))).astype(dy.dtype)


# ---------------------------------------------------------------------------- LogSigmoid

LOG_SIGMOID = schema.register(OpSchema(
    name="LogSigmoid", function="log_sigmoid", domain=JAXOPS_DOMAIN,
    doc="Y = log(sigmoid(X)) = -softplus(-X), elementwise.",
    inputs=_X, outputs=_Y, gradient="LogSigmoidGradient",
    cost_fn=pointwise_cost(flops=4, transcendentals=2),
    formula="ln σ(x) = −softplus(−x)",
    convention="smooth",
))


@defop(LOG_SIGMOID)
def log_sigmoid(x: ArrayLike) -> jax.Array:
    r"""Log of the logistic sigmoid.

    .. math:: \log\sigma(x) = -\mathrm{softplus}(-x) = \min(x, 0) - \ln(1 + e^{-|x|}), \qquad
              (\log\sigma)'(x) = \sigma(-x) = 1 - e^{\log\sigma(x)}

    Stable for every finite x (``log_sigmoid(-1e4) = -1e4``, derivative 1).  ONNX has no
    LogSigmoid: the op is in the jaxops domain and exports as a function of standard ops.
    The gradient op reads X (sigmoid(-x) from the forward's :math:`e^{-|x|}`, as Softplus's),
    so LogSigmoid may not run in place.  Half precision is computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.log_sigmoid(jnp.array([-1e4, 0.0, 1e4]))
      Array([-1.000000e+04, -6.931472e-01,  0.000000e+00], dtype=float32)

    References:
      ``jax.nn.log_sigmoid``; PyTorch ``LogSigmoid``.
    """
    xf = upcast(x)
    return (jnp.minimum(xf, 0) - jnp.log1p(_sigmoid_parts(xf)[0])).astype(x.dtype)


@log_sigmoid.defgrad
def _log_sigmoid_vjp(x, y, dy):
    return log_sigmoid_gradient(x, dy)


LOG_SIGMOID_GRADIENT = schema.register(_gradient_schema(
    LOG_SIGMOID, "dY * sigmoid(-X)", reads="X", flops=6, transcendentals=1))


@defop(LOG_SIGMOID_GRADIENT)
def log_sigmoid_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`log_sigmoid`, from its input: ``dy * sigmoid(-x)``, as
    ``b / (1 + e)`` from ``e = exp(-|x|)`` (``b = e`` for x >= 0, else 1).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.log_sigmoid_gradient(jnp.array([0.0, -1e4, 1e4]), jnp.ones(3))
      Array([0.5, 1. , 0. ], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    e, _, b = _sigmoid_parts(xf)
    return (dyf * b / (1 + e)).astype(dy.dtype)


# ----------------------------------------------------------------------------------- Glu

_GLU_AXIS = Attribute("axis", "int", -1, doc="the axis to split in halves, in [-rank, rank)")


def _glu_axis(s: OpSchema, x, axis: int) -> int:
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise ValueError(
            f"jaxops.{s.function}: attribute 'axis'={axis} is out of range for an input of "
            f"rank {rank}; use an axis in [{-rank}, {rank - 1}].")
    axis %= rank
    if x.shape[axis] % 2:
        raise ValueError(
            f"jaxops.{s.function}: input 'X' has shape {tuple(x.shape)}, whose axis {axis} "
            f"(attribute 'axis') has odd size {x.shape[axis]}; GLU splits it in two halves "
            "(values and gates), so it must be even.")
    return axis


def _halved(shape, axis: int) -> tuple:
    return (*shape[:axis], shape[axis] // 2, *shape[axis + 1:])


def _glu_infer(s: OpSchema, in_avals, *, axis: int):
    x = in_avals[0]
    a = _glu_axis(s, x, axis)
    return (jax.ShapeDtypeStruct(_halved(x.shape, a), x.dtype),)


GLU = schema.register(OpSchema(
    name="Glu", function="glu", domain=JAXOPS_DOMAIN,
    doc="A, B = the two halves of X along axis; Y = A * sigmoid(B).",
    inputs=_X, outputs=_Y, gradient="GluGradient", attributes=(_GLU_AXIS,),
    elementwise=False, identical_type_and_shape=False, infer_fn=_glu_infer,
    cost_fn=pointwise_cost(flops=4, transcendentals=1),
    formula="a·σ(b), (a, b) = halves of x along axis",
    convention="smooth; the axis size must be even",
))


def _halves(xf, axis: int):
    n = xf.shape[axis] // 2
    return (jax.lax.slice_in_dim(xf, 0, n, axis=axis),
            jax.lax.slice_in_dim(xf, n, 2 * n, axis=axis))


@defop(GLU)
def glu(x: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Gated linear unit.

    .. math:: \mathrm{glu}(x) = a \, \sigma(b), \qquad \partial_a = \sigma(b), \qquad
              \partial_b = a \, \sigma(b) (1 - \sigma(b))

    where ``a`` and ``b`` are the first and second halves of ``x`` along ``axis``, as in
    ``jax.nn.glu`` and PyTorch's ``GLU``; the size of that axis must be even (an odd size is
    a ``ValueError`` at trace time).  The output has half of ``x``'s size along ``axis``.
    ONNX has no GLU: the op is in the jaxops domain.  The gradient op reads X.

    Args:
      x: float16, bfloat16, float32 or float64 array of rank >= 1.
      axis: the axis to split, in ``[-rank, rank)`` (static).

    Returns:
      ``a * sigmoid(b)``, shaped like ``x`` with ``axis`` halved.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.glu(jnp.array([[1.0, 2.0, 0.0, 100.0]]))
      Array([[0.5, 2. ]], dtype=float32)

    References:
      Dauphin et al., "Language Modeling with Gated Convolutional Networks" (2017); Shazeer,
      "GLU Variants Improve Transformer" (2020).
    """
    xf = upcast(x)
    a, b = _halves(xf, axis % xf.ndim)
    return (a * jax.lax.logistic(b)).astype(x.dtype)


@glu.defgrad
def _glu_vjp(x, y, dy, *, axis):
    return glu_gradient(x, dy, axis=axis)


def _glu_gradient_infer(s: OpSchema, in_avals, *, axis: int):
    x, dy = in_avals
    a = _glu_axis(s, x, axis)
    if tuple(dy.shape) != _halved(x.shape, a):
        raise ValueError(
            f"jaxops.{s.function}: input 'dY' must have the shape of Glu's output "
            f"{_halved(x.shape, a)} (X's shape {tuple(x.shape)} halved along axis {a}), got "
            f"{tuple(dy.shape)}.")
    return (jax.ShapeDtypeStruct(x.shape, x.dtype),)


GLU_GRADIENT = schema.register(OpSchema(
    name="GluGradient", function="glu_gradient", domain=JAXOPS_DOMAIN,
    doc="dA = dY * sigmoid(B), dB = dY * A * sigmoid(B) * (1 - sigmoid(B)); dX = [dA, dB] "
        "along axis.",
    inputs=_X_DY, outputs=_DX, attributes=(_GLU_AXIS,),
    elementwise=False, identical_type_and_shape=False, infer_fn=_glu_gradient_infer,
    cost_fn=pointwise_cost(flops=2, transcendentals=0.5),  # per element of dX
))


@defop(GLU_GRADIENT)
def glu_gradient(x: ArrayLike, dy: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Gradient op of :func:`glu`, from its input: ``[dy * s, dy * a * s * (1 - s)]`` along
    ``axis``, with ``s = sigmoid(b)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.glu_gradient(jnp.array([2.0, 0.0]), jnp.array([1.0]))
      Array([0.5, 0.5], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    ax = axis % xf.ndim
    a, b = _halves(xf, ax)
    s = jax.lax.logistic(b)
    da = dyf * s
    db = da * a * (1 - s)
    return jnp.concatenate([da, db], axis=ax).astype(dy.dtype)
