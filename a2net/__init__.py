"""a2net: A2Net (Seo et al., ECCV 2018) with Triton kernels behind a PyTorch API.

The library:

* :mod:`a2net.ops` — the ops (correlation, offset-aware correlation, attention pooling),
  Triton on CUDA, PyTorch reference on CPU; :mod:`a2net.layers` — the ops as ``nn.Module`` s;
* :mod:`a2net.model` — :class:`a2net.A2Net`, :class:`a2net.TwoStageAligner` (affine+TPS), the
  backbones and ``build_model``;
* :mod:`a2net.geometry` — affine/TPS grids, point transforms, warping, polygons, synthetic pairs, loss;
* :mod:`a2net.synthetic` — the training pairs (synthetic pairs of any images, the bundled photos);
* :mod:`a2net.benchmarks` — the evaluation benchmarks (PF-WILLOW, PF-PASCAL, TSS, Caltech-101, the
  bundled stereo pair);
* :mod:`a2net.metrics` — PCK, flow PCK, mask metrics, the PCK of synthetic pairs, self-alignment;
* :mod:`a2net.checkpoint` — save and load models; :mod:`a2net.official` — the authors' checkpoints;
* :mod:`a2net.inference` — running an aligner on images and keypoints, with its inference options
  (composed passes, the symmetric estimate, photometric refinement); :mod:`a2net.images`,
  :mod:`a2net.fileio` — reading images, writing files crash-safely;
* :mod:`a2net.errors` — the exceptions raised for a caller's mistake (bad files, NaN inputs,
  corrupted checkpoints, missing optional dependencies) and the command line's exit codes.

The applications: :func:`a2net.align` (:mod:`a2net.alignment`, align a pair and draw it),
:mod:`a2net.train`, :mod:`a2net.evaluate`, and the command line :mod:`a2net.cli` (``a2net ...``).
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
