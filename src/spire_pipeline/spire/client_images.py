"""A user's own images in and out of the backbone's format: read, check, resize, tile.

A new client brings a folder of PNG/JPEG files or one ``.npz`` holding ``images``
((N,H,W[,C]) uint8). :func:`read_images` reads them as they are; :func:`fit_images` turns them
into the backbone's size and channels. Anything that cannot be used raises
:class:`ImageInputError`, whose one-line message names the file and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: file suffixes read from a folder (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes read as they are (palette and 1-bit images are expanded first)
_GREY_MODES = ("L", "LA")
_COLOUR_MODES = ("RGB", "RGBA")


class ImageInputError(ValueError):
    """A client's images cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageSet:
    """Images as read, each (H,W) or (H,W,C) uint8 with C in (1, 3); ``names`` says where
    each came from (a file, or ``file.npz[i]``)."""

    source: str
    names: list[str]
    images: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def read_images(path: str | Path) -> ImageSet:
    """Read a folder of PNG/JPEG files (sorted by name) or an ``.npz`` with ``images``."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _read_npz(path)
    if path.is_file():
        raise ImageInputError(f"{path}: give a folder of PNG/JPEG files or an .npz file")
    raise ImageInputError(f"{path}: no such folder or .npz file")


def _read_folder(folder: Path) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        others = len(list(folder.iterdir()))
        held = f"it holds {others} other entries" if others else "the folder is empty"
        raise ImageInputError(f"{folder}: no images (.png, .jpg, .jpeg) here; {held}")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(_pixels(im, f))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            reason = str(exc).split("\n")[0] or type(exc).__name__
            raise ImageInputError(f"{f}: not a readable image ({reason})") from None
    return ImageSet(str(folder), [str(f) for f in files], images)


def _pixels(im, name: Path) -> np.ndarray:
    """A Pillow image as uint8 (H,W) or (H,W,3); alpha is dropped."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    if im.mode in _GREY_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if im.mode in _COLOUR_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise ImageInputError(
        f"{name}: image mode {im.mode!r} is not supported; save it as 8-bit greyscale or RGB"
    )


def _read_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise ImageInputError(
                    f"{path}: no array named 'images' (it holds {sorted(npz.files)})"
                )
            arr = npz["images"]
    except ImageInputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).split("\n")[0]
        raise ImageInputError(f"{path}: not a readable .npz file ({reason})") from None
    bad_shape = arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3))
    if bad_shape:
        raise ImageInputError(
            f"{path}: 'images' must have shape (N,H,W) or (N,H,W,C) with C in (1, 3), "
            f"not {arr.shape}"
        )
    if arr.dtype != np.uint8:
        raise ImageInputError(f"{path}: 'images' must be uint8, not {arr.dtype}")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return ImageSet(str(path), [f"{path}[{i}]" for i in range(len(arr))], list(arr))


def is_grey(image: np.ndarray) -> bool:
    """Whether an image is greyscale: one channel, or three equal ones."""
    if image.ndim == 2:
        return True
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def fit_images(images: ImageSet, channels: int, size: int, min_images: int = 1) -> np.ndarray:
    """Images as the backbone takes them: uint8 (N,size,size) for one channel, else
    (N,size,size,3). Non-square images are centre-cropped, then resized (Lanczos).

    A colour image for a grey backbone is refused (an RGB file whose three channels are equal
    is grey and accepted); grey images for a colour backbone are repeated over the channels.
    """
    if channels not in (1, 3):
        raise ImageInputError(f"the backbone has {channels} channels; only 1 or 3 are supported")
    if len(images) == 0:
        raise ImageInputError(f"{images.source}: no images")
    if len(images) < min_images:
        raise ImageInputError(
            f"{images.source}: only {len(images)} images; personalising needs at least {min_images}"
        )
    out = []
    for name, img in zip(images.names, images.images):
        if channels == 1 and not is_grey(img):
            raise ImageInputError(
                f"{name}: a colour image, but the backbone is greyscale (1 channel); "
                "give greyscale images"
            )
        if channels == 1:
            fitted = img if img.ndim == 2 else img[..., 0]
        else:
            fitted = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        out.append(_square(fitted, size))
    return np.stack(out)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` x ``size``."""
    h, w = img.shape[:2]
    if h == w == size:
        return img
    from PIL import Image

    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(img[top : top + side, left : left + side])
    resized = Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def tile(images: Sequence[np.ndarray], columns: int = 8, pad: int = 2) -> np.ndarray:
    """Images (each (H,W) or (H,W,C) uint8) tiled into one uint8 picture, row by row, on a
    black background with ``pad`` pixels between them."""
    images = [np.asarray(i) for i in images]
    if not images:
        raise ValueError("nothing to tile")
    h, w = images[0].shape[:2]
    extra = images[0].shape[2:]
    cols = max(1, min(columns, len(images)))
    rows = -(-len(images) // cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, *extra), dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = img
    return out
