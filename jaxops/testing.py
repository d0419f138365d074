"""``opcheck``: the battery of checks jaxops runs on its own ops, for any op.

Like ``torch.library.opcheck``: one call checks that an op -- built-in, or a user's own made
with the same mechanism -- keeps the promises every jaxops op makes: its schema's shape and
dtype inference, its dtype policy, its registered gradient in both modes and to second order,
``jit``, ``vmap`` and (when ONNX is installed) its ONNX export and import.

    >>> import jax.numpy as jnp, jaxops
    >>> from jaxops.testing import opcheck
    >>> report = opcheck(jaxops.softsign, jnp.linspace(-2, 2, 6).reshape(2, 3))
    >>> report.ok, "gradient" in report.passed
    (True, True)

This module needs nothing beyond jaxops' own dependencies; the ONNX check runs only when
``onnx`` and ``onnxruntime`` are importable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckResult", "OpcheckReport", "TOLERANCES", "opcheck"]

Status = Literal["passed", "failed", "not applicable"]

#: What each check compares and how closely.  Value comparisons are elementwise,
#: ``|a - b| <= atol + rtol * |b|``; derivative comparisons are normwise over an output
#: (``|a - b|_inf <= rtol * max(|a|_inf, |b|_inf) + atol``), because a derivative's small
#: entries carry the rounding of its large ones.
TOLERANCES = {
    # float32 values: jit vs eager, vmap vs a loop, ONNX Runtime and import_model vs the op
    # (``opcheck(atol=, rtol=)`` replaces these)
    "value_atol": 1e-6,
    "value_rtol": 1e-5,
    # float64 central differences with step FD_STEP * max(1, |x|_inf) along a random
    # direction: truncation is O(step^2) ~ 1e-12 relative, rounding ~ FD_ROUNDING * |f|/step
    "fd_rtol": 1e-6,
    # float64 identities that hold up to rounding: <vjp(w), t> = <w, jvp(t)>, an input
    # differentiated alone vs with the others, jit(jvp) vs jvp
    "identity_rtol": 1e-10,
}
FD_STEP = 1e-6
# |f| * FD_ROUNDING / step bounds the rounding error of a central difference of f (64 ulps
# of float64: the op's own rounding in each evaluation, not just the subtraction's)
FD_ROUNDING = 64 * float(np.finfo(np.float64).eps)
# jax.hessian materializes (size x size): compared only for inputs up to this many elements
HESSIAN_MAX_SIZE = 256

CHECKS = ("schema", "dtypes", "gradient", "jvp_vjp", "alone", "vmap", "jit",
          "second_derivatives", "onnx")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check's outcome.

    ``max_error`` is the largest discrepancy measured (absolute, in the check's metric) and
    ``max_ratio`` the largest discrepancy divided by the tolerance it was held to (a check
    passes when it is <= 1); both None for checks that compare no numbers."""

    name: str
    status: Status
    detail: str = ""
    max_error: float | None = None
    max_ratio: float | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        nums = ("" if self.max_error is None else
                f" (max error {self.max_error:.3g}, {self.max_ratio:.3g} of tolerance)")
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.name:<19} {self.status} in {self.seconds:.1f} s{nums}{detail}"


@dataclasses.dataclass(frozen=True)
class OpcheckReport:
    """Every check :func:`opcheck` ran on one op, in order."""

    op: str
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if c.status == "passed")

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if c.status == "failed")

    @property
    def not_applicable(self) -> dict[str, str]:
        """Check name -> why it did not apply."""
        return {c.name: c.detail for c in self.checks if c.status == "not applicable"}

    @property
    def ok(self) -> bool:
        return not self.failed

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; the checks are {', '.join(CHECKS)}")

    def __str__(self) -> str:
        return f"opcheck({self.op}):\n" + "\n".join(f"  {c}" for c in self.checks)


class _NotApplicable(Exception):
    """Raised by a check that does not apply to this op or these inputs (the reason)."""


class _Meter:
    """Collects a check's comparisons: its failures and the largest errors."""

    def __init__(self):
        self.failures: list[str] = []
        self.max_error = 0.0
        self.max_ratio = 0.0
        self.compared = False

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def _record(self, what: str, err: np.ndarray, allowed: np.ndarray, extra: str = ""):
        self.compared = True
        if err.size == 0:
            return
        ratio = np.where(err == 0, 0.0, err / np.maximum(allowed, np.finfo(np.float64).tiny))
        k = int(np.argmax(ratio))
        worst_err = float(np.max(err))
        self.max_error = max(self.max_error, worst_err)
        self.max_ratio = max(self.max_ratio, float(ratio.flat[k]))
        if ratio.flat[k] > 1:
            where = "" if err.size == 1 else f" at flat index {k}"
            self.fail(f"{what}: error {float(err.flat[k]):.3g}{where} > allowed "
                      f"{float(np.broadcast_to(allowed, err.shape).flat[k]):.3g} "
                      f"(max error {worst_err:.3g}){extra}")

    def close(self, what: str, actual, expected, atol: float, rtol: float) -> None:
        """Elementwise ``|actual - expected| <= atol + rtol * |expected|``; NaNs must match."""
        a, e = _f64(actual), _f64(expected)
        if a.shape != e.shape:
            self.fail(f"{what}: shape {a.shape} != expected {e.shape}")
            return
        both_nan = np.isnan(a) & np.isnan(e)
        same_inf = np.isinf(a) & (a == e)
        with np.errstate(invalid="ignore"):
            err = np.where(both_nan | same_inf, 0.0, np.abs(a - e))
        err = np.where(np.isnan(err), np.inf, err)
        self._record(what, err, atol + rtol * np.where(np.isfinite(e), np.abs(e), 0.0))

    def near(self, what: str, actual, expected, rtol: float, atol: float = 0.0,
             extra: str = "") -> None:
        """Normwise ``|actual - expected|_inf <= rtol * max(|actual|_inf, |expected|_inf)
        + atol`` (derivatives, where small entries carry the rounding of large ones)."""
        a, e = _f64(actual), _f64(expected)
        if a.shape != e.shape:
            self.fail(f"{what}: shape {a.shape} != expected {e.shape}")
            return
        err = np.max(np.abs(a - e), initial=0.0)
        err = np.inf if np.isnan(err) else err
        scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(e), initial=0.0))
        self._record(what, np.asarray(err), np.asarray(rtol * scale + atol), extra)

    def result(self, name: str, detail: str = "") -> CheckResult:
        errors = (self.max_error, self.max_ratio) if self.compared else (None, None)
        if self.failures:
            return CheckResult(name, "failed", "; ".join(self.failures), *errors)
        return CheckResult(name, "passed", detail, *errors)


def _f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _as_tuple(y) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _inexact(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


class _Context:
    """The op, its inputs (NumPy, None for omitted optional ones), attributes, tolerances
    and random directions shared by the checks."""

    def __init__(self, op, inputs: list, attrs: dict, atol, rtol, dtypes, seed, onnx_wanted):
        self.op, self.schema, self.attrs = op, op.schema, attrs
        self.inputs = inputs
        self.atol = TOLERANCES["value_atol"] if atol is None else atol
        self.rtol = TOLERANCES["value_rtol"] if rtol is None else rtol
        self.dtypes = dtypes
        self.seed = seed
        self.onnx_wanted = onnx_wanted
        self.present = [i for i, x in enumerate(inputs) if x is not None]
        self.floats = [i for i in self.present if _inexact(inputs[i].dtype)]
        self.diff = [i for i in self.floats if self.schema.inputs[i].differentiable]
        self.nondiff = [i for i in self.floats if i not in self.diff]

    def rng(self, salt: int) -> np.random.Generator:
        # one generator per check, so that adding a check does not move another's directions
        return np.random.default_rng([self.seed, salt])

    def name(self, i: int) -> str:
        return repr(self.schema.inputs[i].name)

    def cast(self, dtype) -> list:
        """The inputs as JAX arrays, the float ones in ``dtype`` (call under x64 for
        float64)."""
        return [None if x is None else jnp.asarray(x.astype(dtype) if _inexact(x.dtype) else x)
                for x in self.inputs]

    def call(self, xs: Sequence) -> tuple:
        return _as_tuple(self.op(*xs, **self.attrs))

    def fn(self, xs: Sequence, wrt: Sequence[int]) -> Callable[..., tuple]:
        """The op as a function of the inputs ``wrt`` (the others closed over), returning
        its float outputs."""
        def f(*vals):
            full = list(xs)
            for i, v in zip(wrt, vals, strict=True):
                full[i] = v
            return tuple(o for o in self.call(full) if _inexact(o.dtype))
        return f


# ------------------------------------------------------------------------------ the checks


def _check_schema(ctx: _Context) -> CheckResult:
    meter = _Meter()
    xs = ctx.cast(np.float32)
    avals = [None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs]
    inferred = ctx.schema.infer(*avals, **ctx.attrs)
    traced = _as_tuple(jax.eval_shape(lambda *a: ctx.op(*a, **ctx.attrs), *avals))
    got = [(tuple(a.shape), _dtype_name(a.dtype)) for a in traced]
    want = [(tuple(a.shape), _dtype_name(a.dtype)) for a in inferred]
    if got != want:
        meter.fail(f"schema.infer gives {want}, jax.eval_shape gives {got}")
    return meter.result("schema")


def _float_dtypes(ctx: _Context) -> list[str]:
    if ctx.dtypes is not None:
        return [_dtype_name(d) for d in ctx.dtypes]
    allowed = None
    for i in ctx.floats:
        tc = ctx.schema.type_constraints[ctx.schema.inputs[i].type_param]
        mine = [d for d in tc if jnp.issubdtype(jnp.dtype(d), jnp.floating)]
        allowed = mine if allowed is None else [d for d in allowed if d in mine]
    return allowed or []


def _check_dtypes(ctx: _Context) -> CheckResult:
    if not ctx.floats:
        raise _NotApplicable("no float input")
    dtypes = _float_dtypes(ctx)
    if not dtypes:
        raise _NotApplicable("the float inputs' type constraints share no float dtype")
    meter = _Meter()
    for name in dtypes:
        with jax.enable_x64(name == "float64"):
            xs = ctx.cast(jnp.dtype(name))
            avals = [None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs]
            try:
                outs = ctx.call(xs)
                inferred = ctx.schema.infer(*avals, **ctx.attrs)
            except Exception as e:  # noqa: BLE001 -- reported, with the dtype
                meter.fail(f"{name} inputs: {type(e).__name__}: {e}")
                continue
            got = [(tuple(o.shape), _dtype_name(o.dtype)) for o in outs]
            want = [(tuple(a.shape), _dtype_name(a.dtype)) for a in inferred]
            if got != want:
                meter.fail(f"{name} inputs: outputs {got}, schema.infer says {want}")
    return meter.result("dtypes", "ran in " + ", ".join(dtypes))


def _directions(ctx: _Context, rng, xs) -> tuple[dict, list]:
    """Random tangents T_i (scaled to the input: a step h moves x_i by h * max(1, |x_i|))
    for the differentiable inputs, and random cotangents for the float outputs."""
    tangents = {}
    for i in ctx.diff:
        x = np.asarray(xs[i])
        t = rng.standard_normal(x.shape)
        t = t / max(np.max(np.abs(t), initial=0.0), 1e-300)
        tangents[i] = t * max(1.0, float(np.max(np.abs(x), initial=0.0)))
    return tangents


def _cotangents(rng, outs) -> list:
    return [rng.standard_normal(np.shape(o)) for o in outs]


def _inner(a: Sequence, b: Sequence) -> float:
    return float(sum(np.sum(_f64(x) * _f64(y)) for x, y in zip(a, b, strict=True)))


def _abs_inner(a: Sequence, b: Sequence) -> float:
    return float(sum(np.sum(np.abs(_f64(x) * _f64(y))) for x, y in zip(a, b, strict=True)))


def _central(f: Callable[..., Sequence], primals: tuple, tangents: Sequence) -> tuple[list, float]:
    """Central differences of ``f``'s outputs at ``primals`` along ``tangents`` (None: that
    input held), and a bound on their rounding error."""
    def at(h):
        return f(*(p if t is None else jnp.asarray(np.asarray(p) + h * t)
                   for p, t in zip(primals, tangents, strict=True)))
    plus, minus = at(FD_STEP), at(-FD_STEP)
    diffs = [(_f64(p) - _f64(m)) / (2 * FD_STEP) for p, m in zip(plus, minus, strict=True)]
    scale = max((np.max(np.abs(_f64(p)), initial=0.0) for p in plus), default=0.0)
    return diffs, FD_ROUNDING * scale / FD_STEP


def _only(k: int, tangents: Sequence) -> list:
    """The tangents with all but the k-th replaced by None (held)."""
    return [t if j == k else None for j, t in enumerate(tangents)]


def _float64_setup(ctx: _Context, salt: int):
    """Float64 inputs, the op as a jitted function of its differentiable inputs (jitted:
    each transform compiles once rather than dispatching primitive by primitive, and the
    finite-difference points skip the op's eager value checks, as a jitted program does),
    the primals, random tangents and cotangents."""
    if not ctx.diff:
        raise _NotApplicable("no differentiable float input")
    xs = ctx.cast(np.float64)
    rng = ctx.rng(salt)
    tangents = _directions(ctx, rng, xs)
    f = jax.jit(ctx.fn(xs, ctx.diff))
    primals = tuple(xs[i] for i in ctx.diff)
    outs = f(*primals)
    if not outs:
        raise _NotApplicable("no float output")
    w = tuple(jnp.asarray(c) for c in _cotangents(rng, outs))
    return f, primals, [tangents[i] for i in ctx.diff], outs, w


def _check_gradient(ctx: _Context) -> CheckResult:
    meter = _Meter()
    rtol = TOLERANCES["fd_rtol"]
    with jax.enable_x64(True):
        f, primals, tangents, outs, w = _float64_setup(ctx, 3)
        cts = jax.jit(lambda p, w: jax.vjp(f, *p)[1](w))(primals, w)
        jvp = jax.jit(lambda p, t: jax.jvp(f, p, t)[1])
        # phi = <w, f> may cancel: the rounding of its central difference scales with
        # sum |w f|, not |phi|
        phi_rounding = FD_ROUNDING * _abs_inner(w, outs) / FD_STEP
        for k, i in enumerate(ctx.diff):
            fd_out, rounding = _central(f, primals, _only(k, tangents))
            meter.near(f"reverse mode (vjp) w.r.t. {ctx.name(i)} vs finite differences",
                       _inner([cts[k]], [tangents[k]]), _inner(w, fd_out), rtol, phi_rounding)
            t = tuple(jnp.asarray(t) if j == k else jnp.zeros_like(p)
                      for j, (p, t) in enumerate(zip(primals, tangents, strict=True)))
            for o, (a, b) in enumerate(zip(jvp(primals, t), fd_out, strict=True)):
                meter.near(f"forward mode (jvp) of output {o} w.r.t. {ctx.name(i)} vs "
                           "finite differences", a, b, rtol, rounding)
    return meter.result(
        "gradient", f"float64 central differences, step {FD_STEP:g}*max(1,|x|), "
        f"rtol {rtol:g} normwise")


def _check_jvp_vjp(ctx: _Context) -> CheckResult:
    meter = _Meter()
    with jax.enable_x64(True):
        f, primals, tangents, _, w = _float64_setup(ctx, 4)
        t = tuple(jnp.asarray(t) for t in tangents)
        jvp_out = jax.jit(lambda p, t: jax.jvp(f, p, t)[1])(primals, t)
        cts = jax.jit(lambda p, w: jax.vjp(f, *p)[1](w))(primals, w)
        lhs, rhs = _inner(cts, t), _inner(w, jvp_out)
        scale = _abs_inner(cts, t) + _abs_inner(w, jvp_out)
        meter.near("<vjp(w), t> vs <w, jvp(t)>", lhs, rhs, 0.0,
                   TOLERANCES["identity_rtol"] * scale)
    return meter.result("jvp_vjp", f"float64, rtol {TOLERANCES['identity_rtol']:g} of "
                        "sum |terms|")


def _check_alone(ctx: _Context) -> CheckResult:
    if not ctx.diff and not ctx.nondiff:
        raise _NotApplicable("no float input")
    meter = _Meter()
    rtol = TOLERANCES["identity_rtol"]
    with jax.enable_x64(True):
        xs = ctx.cast(np.float64)
        rng = ctx.rng(5)
        if ctx.diff:
            tangents = _directions(ctx, rng, xs)
            f_all = ctx.fn(xs, ctx.diff)
            primals = tuple(xs[i] for i in ctx.diff)
            t_all = tuple(jnp.asarray(tangents[i]) for i in ctx.diff)
            jvp = jax.jit(lambda p, t: jax.jvp(f_all, p, t)[1])
            jvp_all = jvp(primals, t_all)
            eager = jax.jvp(f_all, primals, t_all)[1]
            for o, (a, b) in enumerate(zip(jvp_all, eager, strict=True)):
                meter.near(f"jit(jvp) vs jvp, output {o}", a, b, rtol)
            w = tuple(jnp.asarray(c) for c in _cotangents(rng, jvp_all))
            cts_all = jax.jit(lambda p, w: jax.vjp(f_all, *p)[1](w))(primals, w)
            for k, i in enumerate(ctx.diff):
                f_i = ctx.fn(xs, [i])  # the other inputs closed over: symbolic zeros
                zeros = tuple(t if j == i else jnp.zeros_like(t)
                              for j, t in zip(ctx.diff, t_all, strict=True))
                want = jvp(primals, zeros)
                got = jax.jit(lambda x, t, f_i=f_i: jax.jvp(f_i, (x,), (t,))[1])(
                    xs[i], t_all[k])
                for o, (a, b) in enumerate(zip(got, want, strict=True)):
                    meter.near(f"jvp of output {o} w.r.t. {ctx.name(i)} alone vs with the "
                               "others (zero tangents)", a, b, rtol)
                (ct,) = jax.jit(lambda x, w, f_i=f_i: jax.vjp(f_i, x)[1](w))(xs[i], w)
                meter.near(f"vjp w.r.t. {ctx.name(i)} alone vs with the others", ct,
                           cts_all[k], rtol)
        for i in ctx.nondiff:
            f_i = ctx.fn(xs, [i])
            try:
                _, t_out = jax.jvp(f_i, (xs[i],), (jnp.ones_like(xs[i]),))
            except TypeError as e:
                if ctx.schema.inputs[i].name not in str(e):
                    meter.fail(f"differentiating the non-differentiable input {ctx.name(i)} "
                               f"raised a TypeError that does not name it: {e}")
            except Exception as e:  # noqa: BLE001 -- the wrong kind of error is a finding
                meter.fail(f"differentiating the non-differentiable input {ctx.name(i)} "
                           f"raised {type(e).__name__}, not TypeError: {e}")
            else:
                size = max((float(np.max(np.abs(_f64(t)), initial=0.0)) for t in t_out),
                           default=0.0)
                meter.fail(f"differentiating the non-differentiable input {ctx.name(i)} "
                           f"returned a tangent (max |t| = {size:.3g}) instead of raising "
                           "TypeError")
    refused = (f"; non-differentiable {', '.join(ctx.name(i) for i in ctx.nondiff)} refused"
               if ctx.nondiff else "")
    return meter.result("alone", f"float64, rtol {rtol:g} normwise{refused}")


def _check_vmap(ctx: _Context) -> CheckResult:
    if not ctx.present:
        raise _NotApplicable("no array input")
    meter = _Meter()
    batch = 3
    rng = ctx.rng(6)
    xs = ctx.cast(np.float32)
    # row b: each input's entries permuted (row 0 as given), so that rows differ but stay in
    # the input's domain (labels in range, probabilities, +-1 targets, positive variances)
    rows = []
    for b in range(batch):
        row = []
        for x in xs:
            if x is None or b == 0 or x.size < 2:
                row.append(x)
            else:
                flat = np.asarray(x).reshape(-1)
                row.append(jnp.asarray(flat[rng.permutation(flat.size)].reshape(x.shape)))
        rows.append(row)
    batched = [None if xs[i] is None else jnp.stack([r[i] for r in rows])
               for i in range(len(xs))]

    def f(*present):
        full = [None] * len(xs)
        for i, v in zip(ctx.present, present, strict=True):
            full[i] = v
        return ctx.call(full)

    got = jax.vmap(f)(*(batched[i] for i in ctx.present))
    loop = [f(*(r[i] for i in ctx.present)) for r in rows]
    for o, g in enumerate(got):
        meter.close(f"vmap vs a loop, output {o}", g, np.stack([_f64(y[o]) for y in loop]),
                    ctx.atol, ctx.rtol)
    return meter.result("vmap", f"float32, batch of {batch} over a new leading axis")


def _check_jit(ctx: _Context) -> CheckResult:
    meter = _Meter()
    xs = ctx.cast(np.float32)
    eager = ctx.call(xs)
    jitted = _as_tuple(jax.jit(lambda *a: ctx.op(*a, **ctx.attrs))(*xs))
    if len(jitted) != len(eager):
        meter.fail(f"jit gives {len(jitted)} outputs, eager {len(eager)}")
    for o, (a, b) in enumerate(zip(jitted, eager, strict=False)):
        meter.close(f"jit vs eager, output {o}", a, b, ctx.atol, ctx.rtol)
    return meter.result("jit", "float32")


def _check_second_derivatives(ctx: _Context) -> CheckResult:
    meter = _Meter()
    rtol = TOLERANCES["fd_rtol"]
    names = [ctx.schema.inputs[i].name for i in ctx.diff]
    with jax.enable_x64(True):
        f, primals, tangents, _, w = _float64_setup(ctx, 8)

        def phi(*p):
            return sum(jnp.vdot(a, b) for a, b in zip(w, f(*p), strict=True))

        argnums = tuple(range(len(primals)))
        grad = jax.jit(jax.grad(phi, argnums))
        fwd = jax.jit(lambda p, t: jax.jvp(lambda *q: grad(*q), p, t)[1])
        for k, i in enumerate(ctx.diff):
            fd, rounding = _central(grad, primals, _only(k, tangents))
            t = tuple(jnp.asarray(t) if j == k else jnp.zeros_like(p)
                      for j, (p, t) in enumerate(zip(primals, tangents, strict=True)))
            for j, a, b in zip(range(len(names)), fwd(primals, t), fd, strict=True):
                meter.near(f"d2/d{names[j]} d{names[k]} (jvp of grad) vs finite differences "
                           "of grad", a, b, rtol, rounding)
            n = np.size(primals[k])
            if n <= HESSIAN_MAX_SIZE:
                hess = jax.jit(jax.hessian(phi, k))(*primals)
                hv = _f64(hess).reshape(n, n) @ tangents[k].reshape(-1)
                meter.near(f"jax.hessian w.r.t. {ctx.name(i)} vs finite differences of grad",
                           hv, _f64(fd[k]).reshape(-1), rtol, rounding)
        # reverse over reverse: the vjp of the gradient with cotangent T is H T (H symmetric)
        fd, rounding = _central(grad, primals, tangents)
        t = tuple(jnp.asarray(t) for t in tangents)
        rev = jax.jit(lambda p, t: jax.vjp(grad, *p)[1](t))(primals, t)
        for name, a, b in zip(names, rev, fd, strict=True):
            meter.near(f"d2/d{name} d(all inputs) (vjp of grad) vs finite differences of "
                       "grad", a, b, rtol, rounding)
    return meter.result("second_derivatives",
                        "float64, jvp/vjp of grad and jax.hessian vs central differences "
                        f"of grad, rtol {rtol:g} normwise")


def _place(xs: list, idx: Sequence[int], vals: Sequence) -> list:
    full = list(xs)
    for i, v in zip(idx, vals, strict=True):
        full[i] = v
    return full


def _check_onnx(ctx: _Context) -> CheckResult:
    if not ctx.onnx_wanted:
        raise _NotApplicable("onnx=False")
    try:
        import onnxruntime as ort

        from jaxops import onnx as jonnx
    except ImportError as e:
        raise _NotApplicable(f"onnx/onnxruntime not installed ({e})") from None
    meter = _Meter()
    xs = ctx.cast(np.float32)
    present = [xs[i] for i in ctx.present]

    def f(*vals):
        return ctx.op(*_place(xs, ctx.present, vals), **ctx.attrs)

    want = ctx.call(xs)
    try:
        model = jonnx.export(f, *present)
    except NotImplementedError as e:
        meter.fail(f"jaxops.onnx.export raised NotImplementedError: {e}")
        return meter.result("onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [f"input_{k}" for k in range(len(present))]
    graph_inputs = {i.name for i in session.get_inputs()}
    feeds = {n: np.asarray(a) for n, a in zip(names, present, strict=True) if n in graph_inputs}
    got = session.run(None, feeds)
    if len(got) != len(want):
        meter.fail(f"ONNX Runtime gives {len(got)} outputs, the op {len(want)}")
    for o, (a, b) in enumerate(zip(got, want, strict=False)):
        meter.close(f"ONNX Runtime vs the op, output {o}", a, b, ctx.atol, ctx.rtol)
    imported = _as_tuple(jonnx.import_model(model)(*present))
    for o, (a, b) in enumerate(zip(imported, want, strict=False)):
        meter.close(f"import_model(export) vs the op, output {o}", a, b, ctx.atol, ctx.rtol)
    return meter.result("onnx", "float32, ONNX Runtime (CPU) and import_model")


_CHECK_FNS = {
    "schema": _check_schema,
    "dtypes": _check_dtypes,
    "gradient": _check_gradient,
    "jvp_vjp": _check_jvp_vjp,
    "alone": _check_alone,
    "vmap": _check_vmap,
    "jit": _check_jit,
    "second_derivatives": _check_second_derivatives,
    "onnx": _check_onnx,
}


def _normalize_inputs(schema, example_inputs) -> list:
    if len(example_inputs) > len(schema.inputs):
        raise TypeError(
            f"opcheck({schema.function}): {len(example_inputs)} example inputs, but "
            f"{schema.name} takes {len(schema.inputs)} "
            f"({', '.join(p.name for p in schema.inputs)}); pass attributes as keywords.")
    inputs = list(example_inputs) + [None] * (len(schema.inputs) - len(example_inputs))
    out = []
    for p, x in zip(schema.inputs, inputs, strict=True):
        if x is None:
            out.append(None)
            continue
        if isinstance(x, jax.core.Tracer):
            raise TypeError(f"opcheck({schema.function}): input {p.name!r} is a tracer; "
                            "call opcheck outside jit/vmap/grad with concrete examples.")
        # NumPy, so that each check casts from the caller's values (float64 kept for the
        # float64 checks whether or not x64 is on)
        out.append(np.asarray(x))
    return out


def opcheck(op: Callable[..., Any], *example_inputs: Any, atol: float | None = None,
            rtol: float | None = None, onnx: bool = True, dtypes: Sequence[Any] | None = None,
            seed: int = 0, **attributes: Any) -> OpcheckReport:
    """Run jaxops' battery of checks on ``op`` at ``example_inputs``.

    The checks (``CHECKS``; tolerances in ``TOLERANCES``):

    1. ``schema``: ``op.schema.infer`` gives the shapes and dtypes of ``jax.eval_shape``.
    2. ``dtypes``: for each float dtype every float input's type constraint allows
       (float16, bfloat16, float32, float64 -- float64 under ``jax.enable_x64``), the op runs
       and its outputs have the dtypes ``infer`` gives (the input dtype, for jaxops' ops).
    3. ``gradient``: in float64, reverse mode (``vjp`` with a random cotangent) and forward
       mode (``jvp``) with respect to each differentiable float input agree with central
       differences along a random direction.
    4. ``jvp_vjp``: ``<vjp(w), t> == <w, jvp(t)>`` in float64 to 1e-10 relative.
    5. ``alone``: each differentiable input differentiated alone (the others closed over,
       so they get symbolic zero tangents) gives the same jvp and vjp as with the others
       (zero tangents); ``jit(jvp) == jvp``; differentiating a float input the schema marks
       non-differentiable raises a TypeError naming it (never a silent zero).
    6. ``vmap``: ``vmap`` over a new leading axis of every array input equals a Python loop.
    7. ``jit``: ``jit(op)`` equals the op called eagerly.
    8. ``second_derivatives``: in float64, the jvp of the gradient (forward over reverse),
       ``jax.hessian`` (inputs up to ``HESSIAN_MAX_SIZE`` elements) and the vjp of the
       gradient (reverse over reverse) agree with central differences of the gradient.
    9. ``onnx`` (when onnx and onnxruntime are importable): ``jaxops.onnx.export`` of the op,
       run by ONNX Runtime and by ``jaxops.onnx.import_model``, gives the op's values in
       float32.  An op the exporter cannot write fails this check.

    Choose example inputs away from kinks (relu at 0, clip at its bounds): finite
    differences there measure a one-sided slope and fail.

    Args:
      op: a jaxops op (built-in, or made with the jaxops op mechanism): it has ``op.schema``.
      example_inputs: the op's inputs in schema order: float arrays (any float dtype; the
        checks cast them), integer arrays (labels, held fixed), None for omitted optional
        inputs; trailing optional inputs may be left out.
      atol, rtol: tolerances of the float32 value comparisons (jit, vmap, ONNX); default
        ``TOLERANCES["value_atol"]`` and ``["value_rtol"]``.
      onnx: False skips the ONNX check (an op without an ONNX export).
      dtypes: the float dtypes of the ``dtypes`` check (default: all the schema allows).
      seed: seeds the random directions, cotangents and vmap rows.
      attributes: the op's attributes, as keyword arguments.

    Returns:
      An :class:`OpcheckReport` of every check: passed, or not applicable and why.

    Raises:
      AssertionError: one or more checks failed; the message lists each failed check with
        its numbers, then the whole report.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> report = opcheck(jaxops.leaky_relu, jnp.array([[-1.5, 0.5], [2.0, -0.25]]),
      ...                  alpha=0.1)
      >>> report.failed, report["jvp_vjp"].status
      ((), 'passed')
    """
    schema = getattr(op, "schema", None)
    if schema is None:
        raise TypeError(f"opcheck checks jaxops ops, which carry an op.schema; "
                        f"{getattr(op, '__name__', op)!r} has none. Make the op with the "
                        "jaxops op mechanism (a schema and a registered gradient).")
    inputs = _normalize_inputs(schema, example_inputs)
    attrs = schema.canonical_attributes(attributes)
    ctx = _Context(op, inputs, attrs, atol, rtol, dtypes, seed, onnx)
    results = []
    for name in CHECKS:
        start = time.perf_counter()
        try:
            result = _CHECK_FNS[name](ctx)
        except _NotApplicable as e:
            result = CheckResult(name, "not applicable", str(e))
        except Exception as e:  # noqa: BLE001 -- a crashing check is a failed property
            message = " ".join(str(e).split())
            result = CheckResult(name, "failed", f"raised {type(e).__name__}: {message}")
        results.append(dataclasses.replace(result, seconds=time.perf_counter() - start))
    report = OpcheckReport(schema.function, tuple(results))
    if not report.ok:
        failed = [c for c in report.checks if c.status == "failed"]
        lines = "\n".join(f"- {c.name}: {c.detail}" for c in failed)
        raise AssertionError(f"opcheck({schema.function}): {len(failed)} of {len(CHECKS)} "
                             f"checks failed:\n{lines}\n\n{report}")
    return report
