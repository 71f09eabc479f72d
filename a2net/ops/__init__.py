"""The A2Net ops: the one place the layers and the model call.

Each op validates its arguments, then runs either the Triton kernels (registered once as
``torch.ops.a2net.*`` custom ops) or the PyTorch reference in :mod:`a2net.reference`, as
:mod:`a2net.ops._dispatch` decides (``A2NET_BACKEND``, device, ``TRITON_INTERPRET``).
"""

from a2net.ops._dispatch import TRITON_CALLS, backend, interpreting, use_triton
from a2net.ops.attention_pool import attention_pool
from a2net.ops.correlation import correlation
from a2net.ops.offset_aware_correlation import offset_aware_correlation
from a2net.reference import feature_l2norm

__all__ = [
    "TRITON_CALLS",
    "attention_pool",
    "backend",
    "correlation",
    "feature_l2norm",
    "interpreting",
    "offset_aware_correlation",
    "use_triton",
]
