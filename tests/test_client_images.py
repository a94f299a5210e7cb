"""A user's own images (issue 17): read from a folder or an .npz, fitted to the backbone, and
one clear error naming the file for anything that cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spire_pipeline.spire.client_images import (
    ImageInputError,
    fit_images,
    is_grey,
    read_images,
    tile,
)


def write_pngs(folder, images, prefix="img"):
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{prefix}_{k:02d}.png")
    return folder


@pytest.fixture
def fmnist_pngs(tmp_path, fashion_mnist):
    return write_pngs(tmp_path / "pngs", fashion_mnist.test_images[:12])


def test_a_folder_of_pngs_reads_back_the_same_pixels(fmnist_pngs, fashion_mnist) -> None:
    images = read_images(fmnist_pngs)
    assert len(images) == 12 and images.names[0].endswith("img_00.png")
    fitted = fit_images(images, channels=1, size=28, min_images=12)
    assert fitted.dtype == np.uint8 and fitted.shape == (12, 28, 28)
    np.testing.assert_array_equal(fitted, fashion_mnist.test_images[:12])


def test_jpeg_rgb_grey_and_odd_sizes_are_fitted(tmp_path, fashion_mnist) -> None:
    img = fashion_mnist.test_images[0]
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.repeat(img[..., None], 3, -1)).save(folder / "a_rgb_but_grey.png")
    Image.fromarray(img).resize((56, 40)).save(folder / "b_wide.jpg", quality=95)
    Image.fromarray(img).convert("P").save(folder / "c_palette.png")
    fitted = fit_images(read_images(folder), channels=1, size=28)
    assert fitted.shape == (3, 28, 28)
    np.testing.assert_array_equal(fitted[0], img)  # an RGB file with equal channels is grey
    colour = fit_images(read_images(folder), channels=3, size=16)
    assert colour.shape == (3, 16, 16, 3)


def test_an_npz_is_read_and_fitted(tmp_path, fashion_mnist) -> None:
    path = tmp_path / "mine.npz"
    np.savez(path, images=fashion_mnist.test_images[:20, :, :, None])
    fitted = fit_images(read_images(path), channels=1, size=14, min_images=10)
    assert fitted.shape == (20, 14, 14)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty folder", "no images (.png, .jpg, .jpeg) here; the folder is empty"),
        ("text file named .png", "bad.png: not a readable image"),
        ("npz without images", "no array named 'images' (it holds ['pictures'])"),
        ("npz of floats", "'images' must be uint8, not float32"),
        ("colour for a grey backbone", "colour_00.png: a colour image, but the backbone is grey"),
        ("too few images", "only 3 images; personalising needs at least 10"),
        ("16-bit image", "image mode 'I;16' is not supported"),
        ("missing path", "no such folder or .npz file"),
        ("a single png file", "give a folder of PNG/JPEG files or an .npz file"),
    ],
)
def test_each_bad_input_gives_one_line_naming_the_culprit(
    tmp_path, fashion_mnist, case, expected
) -> None:
    imgs = fashion_mnist.test_images
    if case == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "text file named .png":
        path = write_pngs(tmp_path / "f", imgs[:12])
        (path / "bad.png").write_text("not an image\n")
    elif case == "npz without images":
        path = tmp_path / "x.npz"
        np.savez(path, pictures=imgs[:12])
    elif case == "npz of floats":
        path = tmp_path / "x.npz"
        np.savez(path, images=imgs[:12].astype(np.float32))
    elif case == "colour for a grey backbone":
        rng = np.random.default_rng(0)
        colour = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(12)]
        path = write_pngs(tmp_path / "f", list(imgs[:3]), "grey")
        write_pngs(path, colour, "colour")
    elif case == "too few images":
        path = write_pngs(tmp_path / "f", imgs[:3])
    elif case == "16-bit image":
        path = write_pngs(tmp_path / "f", imgs[:12])
        Image.fromarray(imgs[0].astype(np.uint16) * 256).save(path / "deep.png")
    elif case == "missing path":
        path = tmp_path / "nowhere"
    else:
        path = write_pngs(tmp_path / "f", imgs[:1]) / "img_00.png"
    with pytest.raises(ImageInputError) as err:
        fit_images(read_images(path), channels=1, size=28, min_images=10)
    message = str(err.value)
    assert "\n" not in message
    assert expected in message, message


def test_is_grey_and_tile() -> None:
    grey = np.full((4, 4, 3), 7, np.uint8)
    assert is_grey(grey) and is_grey(grey[..., 0])
    grey[0, 0, 1] = 8
    assert not is_grey(grey)
    imgs = [np.full((2, 3), k, np.uint8) for k in range(1, 6)]
    out = tile(imgs, columns=2, pad=1)
    assert out.shape == (3 * 3 + 1, 2 * 4 + 1)
    assert out[1, 1] == 1 and out[1, 5] == 2 and out[7, 1] == 5 and out[7, 5] == 0
