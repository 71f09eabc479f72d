"""The A2Net model: image pair -> geometric transformation (docs/design.md §2, stage by stage).

1. frozen backbone (VGG-16 to ``pool4`` or ResNet-101 to ``layer3``), shared by both images;
2. feature L2 normalisation; 3. correlation + ReLU + match normalisation;
4. offset-aware correlation (OAC); 5. BN+ReLU, 7x7 conv+BN+ReLU (the local transformation
   encoder); 6. learned 5-channel position code, 1x1 conv+BN+ReLU, 1x1 projection+BN+ReLU (the
   attention values); 7. attention logits from the encoder output (1x1 conv, BN, ReLU, 1x1 conv),
   softmax attention pooling; 8. a linear regressor to 6 (affine) or 18 (TPS) numbers.

Module names follow the authors' code (``FeatureExtraction.model``, ``FeatureRegression.preconv``,
``.conv``, ``.proj``, ``.att.att``, ``.linear``, ``.weight``) so their checkpoints map by name.

The backbones a model can be built with by name are :data:`BACKBONES`; :func:`build_model`
rebuilds a model from its ``config``, seeded, which is how :mod:`a2net.checkpoint` restores one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from a2net import geometry, ops
from a2net._validation import INPUT_PRECISIONS, as_size, check_choice, check_tensor
from a2net.errors import InputError, check_finite
from a2net.images import check_image_range
from a2net.layers import AttentionPool2d, FeatureCorrelation, OffsetAwareCorrelation, fit_offset_weight

GEOMETRIC_MODELS = {"affine": 6, "tps": 18}
OAC_LAYOUTS = ("geometric", "official")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Backbones


def _torchvision_backbone(name: str) -> tuple[nn.Module, object]:
    import torchvision  # here, not at the top: it imports torch._dynamo (2 s) and small_cnn needs none of it

    if name == "resnet101":
        return torchvision.models.resnet101(weights=None), torchvision.models.ResNet101_Weights.IMAGENET1K_V1
    return torchvision.models.vgg16(weights=None), torchvision.models.VGG16_Weights.IMAGENET1K_V1


def _truncate(name: str, full: nn.Module) -> nn.Sequential:
    if name == "resnet101":  # up to layer3 (1024 channels, stride 16)
        return nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool, full.layer1, full.layer2, full.layer3)
    return nn.Sequential(*list(full.features.children())[:24])  # up to pool4 (512 channels, stride 16)


def resnet101_backbone() -> nn.Sequential:
    """torchvision's ResNet-101 up to ``layer3``, randomly initialised (torchvision's initialisation).

    Shape: ``(B, 3, H, W)`` -> ``(B, 1024, h, w)``, ``h`` = ``H`` halved four times rounding up
    (15x15 at 240x240).
    """
    return _truncate("resnet101", _torchvision_backbone("resnet101")[0])


def vgg16_backbone() -> nn.Sequential:
    """torchvision's VGG-16 up to ``pool4``, randomly initialised (torchvision's initialisation).

    Shape: ``(B, 3, H, W)`` -> ``(B, 512, H // 16, W // 16)``.
    """
    return _truncate("vgg16", _torchvision_backbone("vgg16")[0])


def small_cnn(channels=(32, 64, 128, 256)) -> nn.Sequential:
    """A small stride-16 CNN: four 3x3 convolutions with stride 2 (+ReLU), ``channels`` wide.

    The demo's backbone (the paper's ResNet-101/VGG-16 need ImageNet weights, which cannot be
    downloaded here; docs/design.md §2): 0.39 M parameters, 0.42 GFLOP per 240x240 image, 15x15
    feature maps at 240x240. Kaiming-normal weights (fan-out, as torchvision's VGG), zero biases.

    Shape: ``(B, 3, H, W)`` -> ``(B, channels[-1], ceil(H/16), ceil(W/16))``.
    """
    layers, previous = [], 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True)]
        previous = width
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


#: The backbones A2Net builds by name: name -> constructor of the randomly initialised extractor
#: (``(B, 3, H, W)`` images -> ``(B, C, h, w)`` features, stride 16). ``config["backbone"]`` holds
#: the name, so :func:`build_model` rebuilds the model.
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet101": resnet101_backbone,
    "vgg16": vgg16_backbone,
    "small_cnn": small_cnn,
}
#: The backbones of torchvision: the only ones with ImageNet weights (``backbone_weights``), and
#: those of the authors' published checkpoints.
TORCHVISION_BACKBONES = ("resnet101", "vgg16")


def _load_state_dict_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights: expected a state_dict in {str(path)!r}, got {type(state).__name__}")
    return state


class FeatureExtraction(nn.Module):
    """A frozen ImageNet backbone cut at stride 16.

    Args:
        backbone: a name of :data:`BACKBONES` (``"resnet101"`` to ``layer3``, 1024 channels;
            ``"vgg16"`` to ``pool4``, 512 channels; ``"small_cnn"``) or any ``nn.Module`` mapping
            ``(B, 3, H, W)`` images to ``(B, C, h, w)``.
        weights: ``None`` (random init), or for the torchvision backbones ``"imagenet"``
            (torchvision's weights; downloads when online) or a path to a ``state_dict`` file of the
            full torchvision model or of the truncated extractor.
        freeze: no gradients for the backbone and BatchNorm kept in eval mode (the paper).

    Shape: ``(B, 3, H, W)`` -> ``(B, C, ceil-or-floor(H/16), ...)``.
    """

    def __init__(self, backbone="resnet101", weights=None, freeze: bool = True):
        super().__init__()
        self.freeze = freeze
        if isinstance(backbone, nn.Module):
            if weights is not None:
                raise ValueError(
                    "backbone_weights: expected None for a custom nn.Module backbone, got "
                    f"{weights!r} (load its weights before passing it)"
                )
            self.name = "custom"
            self.model = backbone
        else:
            check_choice("backbone", backbone, tuple(BACKBONES))
            self.name = backbone
            if weights is None:
                self.model = BACKBONES[backbone]()
            elif backbone in TORCHVISION_BACKBONES:
                full, enum = _torchvision_backbone(backbone)
                self.model = _truncate(backbone, self._load(backbone, full, enum, weights))
            else:
                raise ValueError(
                    f"backbone_weights: expected None for the backbone {backbone!r} (pretrained weights "
                    f"exist for {list(TORCHVISION_BACKBONES)} only; a trained one comes with its "
                    f"checkpoint), got {weights!r}"
                )
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    @staticmethod
    def _load(name, full: nn.Module, enum, weights) -> nn.Module:
        if weights == "imagenet":
            try:
                state = enum.get_state_dict(progress=True)
            except Exception as err:  # offline: URLError, socket errors, ...
                raise RuntimeError(
                    f"backbone_weights='imagenet': could not download torchvision's {enum} ({err}). "
                    "On a machine without network, download it elsewhere and pass the local file: "
                    "backbone_weights='/path/to/state_dict.pth'"
                ) from err
            full.load_state_dict(state)
            return full
        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"backbone_weights: expected None, 'imagenet' or a path, got {weights!r}")
        state = _load_state_dict_file(Path(weights))
        try:
            full.load_state_dict(state)
            return full
        except RuntimeError:
            pass
        truncated = _truncate(name, full)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        missing, unexpected = truncated.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"backbone_weights: {str(weights)!r} fits neither torchvision's {name} nor its truncated "
                f"extractor: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        return full

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()  # frozen BatchNorm statistics, as in the paper
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class Attention(nn.Module):
    """Attention logits from the encoder output, then softmax attention pooling of the values.

    Shape: score_features ``(B, 128, h, w)``, values ``(B, C, h, w)`` -> ``(B, C)``.
    """

    def __init__(self, in_channels: int = 128, hidden_channels: int = 64):
        super().__init__()
        self.att = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 1, kernel_size=1),
        )
        self.pool = AttentionPool2d()

    def forward(self, score_features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.pool(self.att(score_features), values)


class FeatureRegression(nn.Module):
    """The A2Net head: correlation -> theta.

    Args:
        output_dim: 6 (affine) or 18 (TPS).
        feature_size: ``(h, w)`` of the feature maps the OAC weight is built for (15x15 at 240x240).
        channels: OAC and encoder channels (128).
        position_channels: channels of the learned position code (5).
        input_precision: see :class:`a2net.layers.FeatureCorrelation`.
        use_oac: the offset-aware correlation (the paper). ``False`` (ablation, CNNGeometric's
            view) reads the correlation's ``Hs*Ws`` source positions as channels of a 1x1 conv.
        use_attention: softmax attention pooling (the paper). ``False`` (ablation, CNNGeometric's
            regressor) flattens the values and regresses theta with one linear layer.
        Both ablations fix the feature map size to ``feature_size``.

    Shape: corr ``(B, Hs*Ws, Ht, Wt)`` and ``source_size = (Hs, Ws)`` -> ``(B, output_dim)``.
    Feature maps of another size than ``feature_size``: the OAC weight is fitted by
    :func:`a2net.layers.fit_offset_weight` and the position code resized by bilinear
    interpolation (align_corners=True) to the encoder's output size.
    """

    def __init__(
        self,
        output_dim: int,
        feature_size=(15, 15),
        channels: int = 128,
        position_channels: int = 5,
        input_precision: str = "tf32",
        use_oac: bool = True,
        use_attention: bool = True,
    ):
        super().__init__()
        self.feature_size = as_size("feature_size", feature_size)
        self.use_oac, self.use_attention = use_oac, use_attention
        h, w = self.feature_size
        if h < 7 or w < 7:
            raise ValueError(f"feature_size: expected at least 7x7 (the encoder's 7x7 conv), got {(h, w)}")
        first = (
            OffsetAwareCorrelation(self.feature_size, out_channels=channels, input_precision=input_precision)
            if use_oac
            else nn.Conv2d(h * w, channels, kernel_size=1)
        )
        self.preconv = nn.Sequential(
            first,
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=7),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.conv = nn.Sequential(
            nn.Conv2d(channels + position_channels, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        if use_attention:
            self.att = Attention(channels, channels // 2)
            self.linear = nn.Linear(channels, output_dim)
        else:
            self.linear = nn.Linear(channels * (h - 6) * (w - 6), output_dim)
        # The position code (authors' name: ``weight``), 5 x 9 x 9 at 240x240, uniform(-1, 1).
        self.weight = nn.Parameter(torch.empty(1, position_channels, h - 6, w - 6).uniform_(-1, 1))

    @property
    def oac(self) -> OffsetAwareCorrelation:
        if not self.use_oac:
            raise AttributeError("oac: this head was built with use_oac=False")
        return self.preconv[0]

    def forward(self, corr: torch.Tensor, source_size) -> torch.Tensor:
        """Correlation ``(B, Hs*Ws, Ht, Wt)`` with ``source_size = (Hs, Ws)`` -> theta."""
        if self.use_oac:
            x = self.preconv[0](corr, source_size=source_size)
        else:
            size = (tuple(source_size), tuple(corr.shape[2:]))
            if size != (self.feature_size, self.feature_size):
                raise ValueError(
                    f"corr: expected feature maps {self.feature_size} (use_oac=False fixes the size), "
                    f"got source {size[0]} and target {size[1]}"
                )
            x = self.preconv[0](corr)
        return self.regress(x)

    def forward_features(
        self, source: torch.Tensor, target: torch.Tensor, normalize_features: bool = True
    ) -> torch.Tensor:
        """Fused path: feature maps ``(B, C, Hs, Ws)``, ``(B, C, Ht, Wt)`` -> theta.

        Runs :func:`a2net.ops.correlation_oac` (correlation, ReLU, match normalisation and OAC in
        one op; the 4D correlation is never stored on the Triton path). Needs ``use_oac``.
        """
        oac = self.oac
        sizes = (tuple(source.shape[2:]), tuple(target.shape[2:]))
        weight = fit_offset_weight(oac.weight, (oac.source_size, oac.target_size), sizes)
        x = ops.correlation_oac(
            source, target, weight, oac.bias, normalize_features=normalize_features, input_precision=oac.input_precision
        )
        return self.regress(x)

    def regress(self, oac_features: torch.Tensor) -> torch.Tensor:
        """OAC output ``(B, O, Ht, Wt)`` -> theta: encoder, position code, attention, linear."""
        encoded = self.preconv[1:](oac_features)
        b, _, h, w = encoded.shape
        code = self.weight
        if code.shape[2:] != (h, w):
            code = F.interpolate(code, size=(h, w), mode="bilinear", align_corners=True)
        values = self.proj(self.conv(torch.cat((code.expand(b, -1, h, w), encoded), dim=1)))
        if not self.use_attention:
            if (h, w) != tuple(self.weight.shape[2:]):
                raise ValueError(
                    f"corr: expected feature maps {self.feature_size} (use_attention=False fixes "
                    f"the size), got an encoder output of {(h, w)}"
                )
            return self.linear(values.flatten(1))
        return self.linear(self.att(encoded, values))


class A2Net(nn.Module):
    """A2Net: attentive semantic alignment with offset-aware correlation kernels.

    Args:
        geometric_model: ``"affine"`` (theta ``(B, 6)``) or ``"tps"`` (theta ``(B, 18)``);
            layouts in :mod:`a2net.geometry`.
        backbone: a name of :data:`BACKBONES` (``"resnet101"``, ``"vgg16"``, ``"small_cnn"``) or an
            ``nn.Module`` (images -> features; ``config["backbone"]`` is then ``"custom"``).
        backbone_weights: ``None``, or for a torchvision backbone ``"imagenet"`` or a path to a
            state_dict file.
        oac_layout: ``"geometric"`` (offsets ``(ys-yt, xs-xt)``, this library's definition) or
            ``"official"`` (the authors' code: the source map's spatial axes are swapped before the
            correlation, which their published checkpoints need; square maps only; docs/design.md
            §3.3). :func:`a2net.official.load_official_checkpoint` builds such a model from their files.
        image_size: ``(H, W)`` the OAC weight and the position code are sized for (240x240 in
            the paper: 15x15 maps, a 29x29 offset grid and a 9x9 position code). Other image sizes
            still work at run time (see :class:`FeatureRegression`).
        channels: OAC/encoder channels (128).
        normalize_features, normalize_matches: the paper's normalisations (on).
        input_precision: fp32 tensor-core precision on the Triton path (``"tf32"``, ``"ieee"``).
        freeze_backbone: keep the backbone frozen (the paper); ``False`` fine-tunes it.
        use_oac, use_attention: the paper's two contributions, on by default; switch them off for
            the ablation (see :class:`FeatureRegression`).
        fused: compute correlation and OAC with the fused op :func:`a2net.ops.correlation_oac`
            (default; the 4D correlation is never stored on the Triton path). Used when the OAC
            and the match normalisation are on; same math as the unfused path.

    Shape:
        ``forward(source_images, target_images)``: two ``(B, 3, H, W)`` batches, ImageNet-normalised
        (see :func:`normalize_images`) -> theta ``(B, 6)`` or ``(B, 18)``, mapping target points
        to source points. A NaN or infinite input raises :class:`a2net.errors.InputError` naming
        the tensor (checked in eager calls; skipped while ``torch.compile`` traces), and so do target
        feature maps smaller than 7x7 (images under 112x112 pixels for the named backbones).

    Example::

        >>> model = A2Net("affine", backbone="vgg16").eval()
        >>> src, tgt = torch.randn(2, 3, 240, 240), torch.randn(2, 3, 240, 240)
        >>> model(src, tgt).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        geometric_model: str = "affine",
        backbone="resnet101",
        backbone_weights=None,
        oac_layout: str = "geometric",
        image_size=(240, 240),
        channels: int = 128,
        normalize_features: bool = True,
        normalize_matches: bool = True,
        input_precision: str = "tf32",
        freeze_backbone: bool = True,
        use_oac: bool = True,
        use_attention: bool = True,
        fused: bool = True,
    ):
        super().__init__()
        check_choice("geometric_model", geometric_model, tuple(GEOMETRIC_MODELS))
        check_choice("oac_layout", oac_layout, OAC_LAYOUTS)
        check_choice("input_precision", input_precision, INPUT_PRECISIONS)
        self.geometric_model = geometric_model
        self.oac_layout = oac_layout
        self.image_size = as_size("image_size", image_size)
        self.FeatureExtraction = FeatureExtraction(backbone, backbone_weights, freeze=freeze_backbone)
        self.FeatureCorrelation = FeatureCorrelation(
            normalize_features=normalize_features,
            relu=normalize_matches,
            normalize_matches=normalize_matches,
            input_precision=input_precision,
        )
        feature_size = self._feature_size(self.image_size)
        if oac_layout == "official" and feature_size[0] != feature_size[1]:
            raise ValueError(
                f"oac_layout: 'official' needs square feature maps, image_size {self.image_size} gives {feature_size}"
            )
        self.FeatureRegression = FeatureRegression(
            GEOMETRIC_MODELS[geometric_model],
            feature_size,
            channels=channels,
            input_precision=input_precision,
            use_oac=use_oac,
            use_attention=use_attention,
        )
        self.config = {
            "geometric_model": geometric_model,
            "backbone": backbone if isinstance(backbone, str) else "custom",
            "oac_layout": oac_layout,
            "image_size": list(self.image_size),
            "channels": channels,
            "normalize_features": normalize_features,
            "normalize_matches": normalize_matches,
            "input_precision": input_precision,
            "freeze_backbone": freeze_backbone,
            "use_oac": use_oac,
            "use_attention": use_attention,
            "fused": fused,
        }
        self.fused = fused and use_oac and normalize_matches

    def _feature_size(self, image_size) -> tuple[int, int]:
        """Feature map size for an image size (arithmetic for the named backbones, a probe otherwise)."""
        h, w = image_size
        name = self.FeatureExtraction.name
        if name == "resnet101":  # four stride-2 stages that round up
            for _ in range(4):
                h, w = (h + 1) // 2, (w + 1) // 2
            return h, w
        if name == "vgg16":  # four 2x2 max-pools that round down
            return h // 16, w // 16
        param = next(self.FeatureExtraction.parameters(), None)
        probe = torch.zeros(
            1,
            3,
            h,
            w,
            device=param.device if param is not None else None,
            dtype=param.dtype if param is not None else None,
        )
        with torch.no_grad():
            out = self.FeatureExtraction(probe)
        return int(out.shape[2]), int(out.shape[3])

    @property
    def output_dim(self) -> int:
        return GEOMETRIC_MODELS[self.geometric_model]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, C, h, w)`` of ImageNet-normalised images ``(B, 3, H, W)``."""
        return self.FeatureExtraction(images)

    def forward(self, source_images: torch.Tensor, target_images: torch.Tensor) -> torch.Tensor:
        check_tensor("source_images", source_images, 4)
        check_tensor("target_images", target_images, 4)
        for name, x in (("source_images", source_images), ("target_images", target_images)):
            if x.shape[1] != 3:
                raise ValueError(f"{name}: expected 3 channels (RGB), got {x.shape[1]} (shape {tuple(x.shape)})")
        if source_images.shape[0] != target_images.shape[0]:
            raise ValueError(
                f"target_images: expected batch size {source_images.shape[0]} (that of "
                f"source_images), got {target_images.shape[0]}"
            )
        if not torch.compiler.is_compiling():  # a data-dependent check: eager calls only
            check_finite("source_images", source_images)
            check_finite("target_images", target_images)
        # channels-last features: the correlation kernels read channel-contiguous rows (docs/design.md §9)
        source = self.features(source_images).contiguous(memory_format=torch.channels_last)
        target = self.features(target_images).contiguous(memory_format=torch.channels_last)
        if target.shape[2] < 7 or target.shape[3] < 7:
            raise InputError(
                f"target_images: expected feature maps of at least 7x7 (the encoder's 7x7 convolution; images of "
                f"at least 112x112 pixels for the named backbones), got {tuple(target.shape[2:])} from "
                f"{tuple(target_images.shape[2:])} images"
            )
        if self.oac_layout == "official":
            source = source.transpose(2, 3)  # the authors' column-major source flattening
        if self.fused:
            return self.FeatureRegression.forward_features(
                source, target, normalize_features=self.FeatureCorrelation.normalize_features
            )
        corr = self.FeatureCorrelation(source, target)
        return self.FeatureRegression(corr, source_size=tuple(source.shape[2:]))


def normalize_images(images: torch.Tensor, size=None) -> torch.Tensor:
    """Images in [0, 1] (or uint8) ``(B, 3, H, W)`` -> resized and ImageNet-normalised.

    Float images must be finite and in [0, 1] (:func:`a2net.images.check_image_range`): one in
    0..255 raises :class:`a2net.errors.InputError` instead of being normalised as if in [0, 1].

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] or uint8 in [0, 255].
        size: ``(H, W)`` to resize to (bilinear, antialiased), or None to keep the size.
    """
    check_tensor("images", images, 4, floating=False)
    if images.shape[1] != 3:
        raise ValueError(f"images: expected 3 channels (RGB), got {images.shape[1]}")
    check_image_range("images", images)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    if size is not None:
        x = F.interpolate(x, size=as_size("size", size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class TwoStageAligner(nn.Module):
    """Affine then TPS ("affine+TPS", docs/design.md §2): the TPS model refines the affine alignment.

    The affine model aligns the source; the source is warped by its theta; the TPS model then
    aligns the warped source with the target. A target point maps through the TPS theta into the
    affine-warped source, then through the affine theta into the source.

    Shape: ``forward(source_images, target_images)`` -> ``(theta_affine (B, 6), theta_tps (B, 18))``.
    """

    def __init__(self, affine: A2Net, tps: A2Net):
        super().__init__()
        if affine.geometric_model != "affine" or tps.geometric_model != "tps":
            raise ValueError(
                f"expected an affine and a TPS model, got {affine.geometric_model!r} and {tps.geometric_model!r}"
            )
        self.affine = affine
        self.tps = tps

    def forward(self, source_images: torch.Tensor, target_images: torch.Tensor):
        theta_affine = self.affine(source_images, target_images)
        warped = geometry.warp_image(source_images, theta_affine)
        theta_tps = self.tps(warped, target_images)
        return theta_affine, theta_tps

    @staticmethod
    def transform_points(theta_affine: torch.Tensor, theta_tps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Target points ``(B, 2, N)`` in [-1, 1] -> source points, through TPS then affine."""
        return geometry.transform_points(theta_affine, geometry.transform_points(theta_tps, points))


# --------------------------------------------------------------------------------------------
# Building a model from its config


def build_model(config: dict, backbone_seed: int | None = 0, backbone_weights=None) -> A2Net:
    """Build an A2Net from a ``config`` dict (``A2Net(...).config``).

    The whole model is initialised under a forked RNG seeded with ``backbone_seed`` (the global RNG
    is left untouched), so the same seed gives the same weights, bit for bit, on one PyTorch
    version; ``model.backbone_init`` records the seed and the SHA-256 of the backbone when it is
    randomly initialised (``backbone_weights=None``) so that :func:`a2net.checkpoint.save_checkpoint`
    can store the seed instead of the tensors.

    Args:
        config: A2Net keyword arguments; ``"backbone"`` is a key of :data:`BACKBONES` (``"custom"``
            cannot be rebuilt).
        backbone_seed: seed of the initialisation, or ``None`` to use the global RNG as it is.
        backbone_weights: ``None`` (random), ``"imagenet"`` or a path (torchvision backbones only;
            see :class:`A2Net`).
    Returns:
        the model (train mode, CPU).
    """
    config = dict(config)
    check_choice("config['backbone']", config.get("backbone", "resnet101"), tuple(BACKBONES))
    with torch.random.fork_rng(devices=[]):
        if backbone_seed is not None:
            torch.manual_seed(backbone_seed)
        model = A2Net(**config, backbone_weights=backbone_weights)
    if backbone_weights is None and backbone_seed is not None:
        model.backbone_init = {"seed": int(backbone_seed), "sha256": backbone_sha256(model)}
    return model


def backbone_sha256(model: nn.Module) -> str:
    """SHA-256 of the backbone's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.FeatureExtraction.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
