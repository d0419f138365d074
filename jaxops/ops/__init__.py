"""Operator families: each module holds its ops' schemas, XLA implementations and
registered gradients, side by side."""
