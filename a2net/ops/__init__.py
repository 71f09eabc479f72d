"""The A2Net ops: the one place the layers and the model call.

``correlation_oac`` fuses ``correlation`` (ReLU and match normalisation on) with
``offset_aware_correlation``: on the Triton path the 4D correlation is never stored.

Each op validates its arguments, then runs either the Triton kernels (registered once as
``torch.ops.a2net.*`` custom ops) or the PyTorch reference in :mod:`a2net.reference`, as
:mod:`a2net.ops._dispatch` decides (``A2NET_BACKEND``, device, ``TRITON_INTERPRET``).
"""

from a2net.ops._dispatch import TRITON_CALLS, backend, interpreting, use_triton
from a2net.ops.attention_pool import attention_pool
from a2net.ops.correlation import correlation
from a2net.ops.correlation_oac import correlation_oac
from a2net.ops.offset_aware_correlation import offset_aware_correlation
from a2net.reference import feature_l2norm

__all__ = [
    "TRITON_CALLS",
    "attention_pool",
    "backend",
    "correlation",
    "correlation_oac",
    "feature_l2norm",
    "interpreting",
    "offset_aware_correlation",
    "use_triton",
]
