"""What every KID feature extractor is: uint8 images in, float64 feature vectors out.

Images are converted to RGB (grey replicated), resized with clean-fid's "clean" resizer (PIL
bicubic on float32 channels, no quantisation) to the network's input size, and handed to the
network, which normalises them the way it expects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["FeatureExtractor", "FeatureWeightsMissing"]


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
