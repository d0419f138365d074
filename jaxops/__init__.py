"""jaxops: neural-network operators with registered gradients and ONNX-style schemas.

This file is the public API: every name users may import is re-exported here.
"""

from jaxops import schema as schema
from jaxops._dispatch import Implementation as Implementation
from jaxops._op import Op as Op, defop as defop
from jaxops.clipping import (
    clip_by_global_norm as clip_by_global_norm,
    clip_by_norm as clip_by_norm,
    clip_by_value as clip_by_value,
    global_norm as global_norm,
)
from jaxops.ops.activations import (
    clip as clip,
    clip_gradient as clip_gradient,
    leaky_relu as leaky_relu,
    leaky_relu_gradient as leaky_relu_gradient,
    prelu as prelu,
    prelu_gradient as prelu_gradient,
    relu as relu,
    relu_gradient as relu_gradient,
    relu_n as relu_n,
    relu_n_gradient as relu_n_gradient,
    sigmoid as sigmoid,
    sigmoid_gradient as sigmoid_gradient,
    softsign as softsign,
    softsign_gradient as softsign_gradient,
    tanh as tanh,
    tanh_gradient as tanh_gradient,
    thresholded_relu as thresholded_relu,
    thresholded_relu_gradient as thresholded_relu_gradient,
)
from jaxops.ops.cross_entropy import (
    cross_entropy as cross_entropy,
    cross_entropy_gradient as cross_entropy_gradient,
    nll_loss as nll_loss,
    nll_loss_gradient as nll_loss_gradient,
    softmax_cross_entropy as softmax_cross_entropy,
    softmax_cross_entropy_gradient as softmax_cross_entropy_gradient,
)
from jaxops.ops.dropout import (
    dropout as dropout,
    dropout_gradient as dropout_gradient,
)
from jaxops.ops.exponential import (
    exp as exp,
    exp_gradient as exp_gradient,
    log as log,
    log_gradient as log_gradient,
)
from jaxops.ops.layer_normalization import (
    group_norm as group_norm,
    group_norm_gradient as group_norm_gradient,
    layer_norm as layer_norm,
    layer_norm_gradient as layer_norm_gradient,
    rms_norm as rms_norm,
    rms_norm_gradient as rms_norm_gradient,
)
from jaxops.ops.linear_cross_entropy import (
    linear_cross_entropy as linear_cross_entropy,
    linear_cross_entropy_gradient as linear_cross_entropy_gradient,
)
from jaxops.ops.losses import (
    binary_cross_entropy as binary_cross_entropy,
    binary_cross_entropy_gradient as binary_cross_entropy_gradient,
    hinge as hinge,
    huber_loss as huber_loss,
    kl_divergence as kl_divergence,
    mae as mae,
    mse as mse,
    msle as msle,
)
from jaxops.ops.normalization import (
    batch_norm as batch_norm,
    batch_norm_gradient as batch_norm_gradient,
)
from jaxops.ops.smooth_activations import (
    celu as celu,
    celu_gradient as celu_gradient,
    elu as elu,
    elu_gradient as elu_gradient,
    gelu as gelu,
    gelu_gradient as gelu_gradient,
    glu as glu,
    glu_gradient as glu_gradient,
    hard_sigmoid as hard_sigmoid,
    hard_sigmoid_gradient as hard_sigmoid_gradient,
    hard_swish as hard_swish,
    hard_swish_gradient as hard_swish_gradient,
    log_sigmoid as log_sigmoid,
    log_sigmoid_gradient as log_sigmoid_gradient,
    mish as mish,
    mish_gradient as mish_gradient,
    selu as selu,
    selu_gradient as selu_gradient,
    silu as silu,
    silu_gradient as silu_gradient,
    softplus as softplus,
    softplus_gradient as softplus_gradient,
)
from jaxops.ops.softmax import (
    log_softmax as log_softmax,
    log_softmax_gradient as log_softmax_gradient,
    softmax as softmax,
    softmax_gradient as softmax_gradient,
)
from jaxops.schema import Attribute as Attribute, OpSchema as OpSchema, Parameter as Parameter

# isort: split
# last, so that the README's table lists the families in the order above
from jaxops.kernels import (  # noqa: F401
    # imported for their effect: each fused op's kernel package registers its Pallas
    # kernels on the op (jaxops/kernels/__init__.py); not public names
    batch_norm as _batch_norm_kernels,
    linear_cross_entropy as _linear_cross_entropy_kernels,
    softmax as _softmax_kernels,
    softmax_cross_entropy as _softmax_cross_entropy_kernels,
)

__version__ = "0.1.0"
