"""Operator families: each module holds its ops' schemas, XLA implementations and
registered gradients, side by side.  :mod:`jaxops.ops.loss_machinery` holds no ops: it is
what the loss families share (reduction, labels and weights, the dloss of gradient ops)."""
