"""jaxops: neural-network operators with registered gradients and ONNX-style schemas.

This file is the public API: every name users may import is re-exported here.
"""

from jaxops import schema as schema
from jaxops.ops.activations import (
    leaky_relu as leaky_relu,
)
from jaxops.ops.activations import (
    leaky_relu_gradient as leaky_relu_gradient,
)
from jaxops.ops.activations import (
    relu as relu,
)
from jaxops.ops.activations import (
    relu_gradient as relu_gradient,
)
from jaxops.ops.activations import (
    relu_n as relu_n,
)
from jaxops.ops.activations import (
    relu_n_gradient as relu_n_gradient,
)
from jaxops.ops.activations import (
    softsign as softsign,
)
from jaxops.ops.activations import (
    softsign_gradient as softsign_gradient,
)
from jaxops.ops.exponential import (
    log as log,
)
from jaxops.ops.exponential import (
    log_gradient as log_gradient,
)

__version__ = "0.1.0"
