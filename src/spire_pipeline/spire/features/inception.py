"""clean-fid's Inception-v3 as a KID feature extractor (2048-d pool3 features, input 299).

Its weights are downloaded once; without them :class:`FeatureWeightsMissing` says which file to
put where.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import urllib.request
import warnings
from pathlib import Path

from spire_pipeline.spire.features.base import FeatureExtractor, FeatureWeightsMissing

__all__ = [
    "INCEPTION_FILENAME",
    "INCEPTION_IMAGE_SIZE",
    "INCEPTION_URL",
    "build_inception",
    "inception_weights_path",
]

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    + INCEPTION_FILENAME
)
INCEPTION_IMAGE_SIZE = 299
_INCEPTION_DIR_ENV = "SPIRE_INCEPTION_DIR"
_DOWNLOAD_TIMEOUT_S = 60


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


def build_inception(image_size: int | None, batch_size: int, device: str):
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
