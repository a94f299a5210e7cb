"""The KID feature extractors by name, and the label that makes KID values comparable."""

from __future__ import annotations

from spire_pipeline.spire.features.base import FeatureExtractor
from spire_pipeline.spire.features.efficientnet_lite import (
    DEFAULT_IMAGE_SIZE,
    build_efficientnet_lite0,
)
from spire_pipeline.spire.features.inception import INCEPTION_IMAGE_SIZE, build_inception

__all__ = [
    "DEFAULT_FEATURE_EXTRACTOR",
    "FEATURE_EXTRACTORS",
    "build_feature_extractor",
    "extractor_label",
]

DEFAULT_FEATURE_EXTRACTOR = "efficientnet_lite0"
_BUILDERS = {"efficientnet_lite0": build_efficientnet_lite0, "inception": build_inception}
_DEFAULT_SIZES = {"efficientnet_lite0": DEFAULT_IMAGE_SIZE, "inception": INCEPTION_IMAGE_SIZE}
FEATURE_EXTRACTORS = tuple(_BUILDERS)


def build_feature_extractor(
    name: str = DEFAULT_FEATURE_EXTRACTOR,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> FeatureExtractor:
    """Build the KID feature extractor ``name`` (one of :data:`FEATURE_EXTRACTORS`)."""
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURE_EXTRACTORS)}"
        )
    return _BUILDERS[name](image_size, batch_size, device)


def extractor_label(name: str, image_size: int | None = None) -> str:
    """``<name>_<size>px``: KID values are comparable only when the name and size agree."""
    size = _DEFAULT_SIZES.get(name) if image_size is None else int(image_size)
    return f"{name}_{size}px"
