"""Example inputs for running :func:`jaxops.testing.opcheck` on every built-in op: the
samplers of the reference table (``reference.CASES``, ``STRUCTURED``) where it has the op,
written here for the gradient ops it lacks.  Inputs are moved off the ops' kinks, where
finite differences measure a one-sided slope."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from reference import CASES, STRUCTURED

import jaxops as jo

# elementwise ops: small, so that jax.hessian (size x size) stays cheap
SHAPE = (2, 3)
# (N, C, d): N rows, C classes or channels
STRUCT = (4, 3, 2)
# distance kept from a kink
MARGIN = 0.1


@dataclasses.dataclass(frozen=True)
class Example:
    name: str  # test id
    op: object  # the public jaxops op
    inputs: tuple  # in schema order, None for an omitted optional input
    attrs: dict
    kinks: tuple[float, ...] = ()  # of the reference case it came from

    @property
    def function(self) -> str:
        return self.op.schema.function


def _off_kinks(xs, kinks):
    """Float inputs moved at least MARGIN away from each kink."""
    out = []
    for x in xs:
        x = np.array(x)
        if x.dtype.kind == "f":
            for k in kinks:
                near = np.abs(x - k) < MARGIN
                x = np.where(near, k + MARGIN * np.where(x < k, -1.0, 1.0), x)
        out.append(x)
    return tuple(out)


def _from_table(rng):
    """The reference cases whose ``op`` is a public op (not a wrapper around one)."""
    public = {s.function for s in jo.schema.builtin_schemas()}
    for case in (*CASES, *STRUCTURED):
        name = getattr(case.op, "__name__", "")
        if name not in public or getattr(jo, name) is not case.op:
            continue
        xs = case.sample(rng, case.shape or SHAPE)
        label = case.name + "".join(f",{k}={v}" for k, v in case.attrs.items())
        yield Example(label, case.op, _off_kinks(xs, case.kinks), dict(case.attrs),
                      case.kinks)


def _labelled(rng):
    n, c, d = STRUCT
    scores = rng.uniform(-3, 3, (n, c, d))
    labels = rng.integers(0, c, (n, d)).astype(np.int32)
    labels.reshape(-1)[:2] = 1  # ignore_index=1 occurs
    weights = rng.uniform(0.5, 2, (c,))
    log_prob = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    for red, ignore, w in (("mean", 1, weights), ("none", None, None), ("sum", 1, None)):
        attrs = {"ignore_index": ignore, "reduction": red}
        dloss = rng.uniform(-2, 2, (n, d) if red == "none" else ())
        tag = f"{red},ignore={ignore},{'weighted' if w is not None else 'unweighted'}"
        yield Example(f"softmax_cross_entropy[{tag}]", jo.softmax_cross_entropy,
                      (scores, labels, w), attrs)
        yield Example(f"softmax_cross_entropy_gradient[{tag}]",
                      jo.softmax_cross_entropy_gradient, (log_prob, labels, w, dloss), attrs)
        yield Example(f"nll_loss[{tag}]", jo.nll_loss, (log_prob, labels, w), attrs)
        yield Example(f"nll_loss_gradient[{tag}]", jo.nll_loss_gradient,
                      (log_prob, labels, w, dloss), attrs)
    yield Example("softmax_cross_entropy[return_log_prob]", jo.softmax_cross_entropy,
                  (scores, labels, weights),
                  {"ignore_index": 1, "reduction": "none", "return_log_prob": True})


def _cross_entropy_gradients(rng):
    n, c = 4, 3
    p = rng.uniform(0.05, 1, (n, c))
    p /= p.sum(-1, keepdims=True)
    t = rng.uniform(0.05, 1, (n, c))
    t /= t.sum(-1, keepdims=True)
    for from_logits, x in ((False, p), (True, np.log(p) + 0.3)):
        for red in ("none", "mean"):
            dloss = rng.uniform(-2, 2, (n,) if red == "none" else ())
            attrs = {"from_logits": from_logits, "reduction": red}
            yield Example(f"cross_entropy_gradient[from_logits={from_logits},{red}]",
                          jo.cross_entropy_gradient, (x, t, dloss), attrs)
    logits, targets = rng.uniform(-4, 4, SHAPE), rng.uniform(0, 1, SHAPE)
    for red in ("none", "mean", "sum"):
        dloss = rng.uniform(-2, 2, SHAPE if red == "none" else ())
        yield Example(f"binary_cross_entropy_gradient[{red}]", jo.binary_cross_entropy_gradient,
                      (logits, targets, dloss), {"reduction": red})


def _prelu_gradient(rng):
    x = _off_kinks((rng.uniform(-3, 3, SHAPE),), (0.0,))[0]
    yield Example("prelu_gradient", jo.prelu_gradient,
                  (x, rng.uniform(-1, 1, SHAPE), rng.uniform(-2, 2, SHAPE)), {})


def _batch_norm(rng):
    n, c, d = STRUCT
    x = rng.normal(0.5, 2, (n, c, d, 2))
    scale, bias = rng.uniform(0.5, 2, c), rng.normal(size=c)
    mean, var = rng.normal(size=c), rng.uniform(0.5, 2, c)
    axes = (0, 2, 3)
    for training in (True, False):
        yield Example(f"batch_norm[training={training}]", jo.batch_norm,
                      (x, scale, bias, mean, var), {"training": training})
        saved_mean = x.mean(axes) if training else mean
        saved_var = x.var(axes) if training else var
        yield Example(f"batch_norm_gradient[training={training}]", jo.batch_norm_gradient,
                      (x, scale, saved_mean, saved_var, rng.normal(size=x.shape)),
                      {"training": training})


def _layer_normalization(rng):
    x = rng.normal(0.5, 2, (4, 3, 5))
    scale, bias, dy = rng.uniform(0.5, 2, 5), rng.normal(size=5), rng.normal(size=x.shape)
    yield Example("layer_norm_gradient", jo.layer_norm_gradient, (x, scale, bias, dy), {})
    yield Example("layer_norm_gradient[no B,axis=1]", jo.layer_norm_gradient,
                  (x, rng.uniform(0.5, 2, (3, 1)), None, dy), {"axis": 1})
    yield Example("rms_norm_gradient", jo.rms_norm_gradient, (x, scale, dy), {})
    xg = rng.normal(0.5, 2, (2, 4, 3))
    yield Example("group_norm_gradient", jo.group_norm_gradient,
                  (xg, rng.uniform(0.5, 2, 4), rng.normal(size=xg.shape)), {"num_groups": 2})


def _linear_cross_entropy(rng):
    n, hidden, v = 6, 3, 5
    h, w = rng.uniform(-2, 2, (n, hidden)), rng.uniform(-2, 2, (hidden, v))
    labels = rng.integers(0, v, n).astype(np.int32)
    labels[:2] = 1
    weights = rng.uniform(0.5, 2, v)
    for red, ignore, wts in (("mean", 1, weights), ("sum", None, None)):
        attrs = {"ignore_index": ignore, "reduction": red, "chunk_size": 4}
        tag = f"{red},ignore={ignore}"
        yield Example(f"linear_cross_entropy[{tag}]", jo.linear_cross_entropy,
                      (h, w, labels, wts), attrs)
        yield Example(f"linear_cross_entropy_gradient[{tag}]",
                      jo.linear_cross_entropy_gradient,
                      (h, w, labels, wts, np.float64(rng.uniform(-2, 2))), attrs)


def _gradient_op_inputs(forward: Example, rng) -> tuple | None:
    """The inputs of ``forward``'s gradient op, read from the two schemas by name: an input
    named as a forward input takes its value, one named as a forward output the op's output
    there, and ``d<output>`` a random cotangent of that output's shape.  None where a name
    matches none of these (that gradient op needs an example written out)."""
    fs = forward.op.schema
    gs = jo.schema.get(fs.gradient)
    with jax.enable_x64(True):  # the float64 inputs give the float64 output
        outs = forward.op(*forward.inputs, **forward.attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    by_name = {p.name: x for p, x in zip(fs.inputs, forward.inputs, strict=False)}
    # an output at a kink of the forward op is a kink of a gradient op that reads it (relu's
    # Y = 0): moved off it, as the inputs were
    by_name |= {p.name: _off_kinks((np.asarray(y, np.float64),), forward.kinks)[0]
                for p, y in zip(fs.outputs, outs, strict=True)}
    by_name |= {f"d{p.name}": rng.uniform(-2, 2, np.shape(y))
                for p, y in zip(fs.outputs, outs, strict=True)}
    if any(p.name not in by_name and not p.optional for p in gs.inputs):
        return None
    return tuple(by_name.get(p.name) for p in gs.inputs)


def _gradient_ops_of(found: tuple[Example, ...], rng):
    """An example for each gradient op that has none, from its forward op's first example:
    an op added with one row in the reference table has its gradient op checked too."""
    have = {e.function for e in found}
    for e in found:
        fs = e.op.schema
        if fs.gradient is None or (gs := jo.schema.get(fs.gradient)).function in have:
            continue
        inputs = _gradient_op_inputs(e, rng)
        if inputs is not None:
            have.add(gs.function)
            yield Example(f"{gs.function}[from {e.name}]", getattr(jo, gs.function), inputs,
                          {k: v for k, v in e.attrs.items()
                           if any(a.name == k for a in gs.attributes)})

def _dropout(rng):
    """Inference mode (the identity): a training call has no ONNX export, the battery's last
    check; tests/test_dropout.py runs the battery on training calls without it."""
    x, key = rng.uniform(-2, 2, SHAPE), np.asarray(jax.random.PRNGKey(3))
    attrs = {"rate": 0.3, "training": False}
    yield Example("dropout[training=False]", jo.dropout, (x, key), attrs)
    yield Example("dropout_gradient[training=False]", jo.dropout_gradient, (key, x), attrs)


def examples() -> tuple[Example, ...]:
    rng = np.random.default_rng(0)
    found = (*_from_table(rng), *_labelled(rng), *_cross_entropy_gradients(rng),
             *_prelu_gradient(rng), *_batch_norm(rng), *_linear_cross_entropy(rng),
             *_layer_normalization(rng), *_dropout(rng))
    return (*found, *_gradient_ops_of(found, rng))
