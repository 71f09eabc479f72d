"""a2net: A2Net (Seo et al., ECCV 2018) with Triton kernels behind a PyTorch API.

* :mod:`a2net.ops` — the ops (correlation, offset-aware correlation, attention pooling),
  Triton on CUDA, PyTorch reference on CPU;
* :mod:`a2net.layers` — the ops as ``nn.Module`` s;
* :class:`a2net.A2Net` — the model; :class:`a2net.TwoStageAligner` — affine+TPS;
* :mod:`a2net.geometry` — affine/TPS grids, point transforms, warping, synthetic pairs, loss;
* :func:`a2net.align` — align an image pair and draw it (:mod:`a2net.alignment`);
* :mod:`a2net.data`, :mod:`a2net.train`, :mod:`a2net.evaluate`, :mod:`a2net.metrics`,
  :mod:`a2net.datasets`, :mod:`a2net.checkpoint` — training and evaluation.
"""

__version__ = "0.1.0"
__all__ = ["A2Net", "TwoStageAligner", "align", "normalize_images", "__version__"]

_LAZY = {
    "A2Net": "a2net.model",
    "TwoStageAligner": "a2net.model",
    "normalize_images": "a2net.model",
    "align": "a2net.alignment",
}


def __getattr__(name):
    # The model pulls in torchvision; importing a2net.ops or a2net.layers should not.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'a2net' has no attribute {name!r}")
