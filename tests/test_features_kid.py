"""KID feature extractors (EfficientNet-Lite0, clean-fid Inception) and the KID estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spire_pipeline.spire.features import (
    DEFAULT_IMAGE_SIZE,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    FeatureWeightsMissing,
    build_feature_extractor,
)
from spire_pipeline.spire.features import inception as inception_mod
from spire_pipeline.spire.features.efficientnet_lite import (
    NATIVE_IMAGE_SIZE,
    NUM_FEATURES,
    EfficientNetLite,
    efficientnet_lite0,
    lite0_weights_path,
)
from spire_pipeline.spire.idx import read_idx
from spire_pipeline.spire.kid import kid

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIRS = (
    ROOT / "data" / "01_raw" / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a small machine shared with other work, OpenMP threads spinning
    against other processes can make these tiny forward passes 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return efficientnet_lite0(pretrained=True)


def _imagenet_probs(model: EfficientNetLite, image: np.ndarray) -> torch.Tensor:
    """Centre square crop, PIL bicubic to 224, the network's normalisation, softmax."""
    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    size = (NATIVE_IMAGE_SIZE, NATIVE_IMAGE_SIZE)
    x = np.asarray(Image.fromarray(crop).resize(size, Image.BICUBIC), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        return model(model.normalize(x)).softmax(dim=1)[0]


def test_lite0_weights_load_strictly():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    result = EfficientNetLite().load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(state) == 296


def test_lite0_classifies_a_cat(lite0):
    skdata = pytest.importorskip("skimage.data")
    probs = _imagenet_probs(lite0, skdata.chelsea())
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.7


def test_lite0_classifies_coffee(lite0):
    skdata = pytest.importorskip("skimage.data")
    probs = _imagenet_probs(lite0, skdata.coffee())
    assert int(probs.argmax()) in COFFEE_CLASSES
    assert float(probs.max()) > 0.5


def test_lite0_features_shape_any_size(lite0):
    with torch.inference_mode():
        for size in (32, 57):
            out = lite0.features(torch.zeros(2, 3, size, size))
            assert out.shape == (2, NUM_FEATURES)
            assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- extractor


@pytest.fixture(scope="module")
def extractor():
    return build_feature_extractor()


def test_extractor_defaults(extractor):
    assert extractor.name == "efficientnet_lite0"
    assert extractor.image_size == DEFAULT_IMAGE_SIZE
    assert extractor.dim == NUM_FEATURES


def test_extractor_shapes_grey_and_determinism():
    ex = build_feature_extractor("efficientnet_lite0", image_size=32, batch_size=3)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    out = ex(grey)
    assert out.shape == (5, NUM_FEATURES) and out.dtype == np.float64
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, ex(grey))  # deterministic
    np.testing.assert_array_equal(out, ex(grey[..., None]))  # (N, H, W, 1)
    np.testing.assert_array_equal(out, ex(np.repeat(grey[..., None], 3, axis=-1)))  # RGB
    assert ex(grey[:0]).shape == (0, NUM_FEATURES)


def test_extractor_rejects_bad_images():
    ex = build_feature_extractor("efficientnet_lite0", image_size=32)
    with pytest.raises(ValueError, match="uint8"):
        ex(np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        ex(np.zeros((2, 28, 28, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("vgg")


def test_inception_without_weights_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRE_INCEPTION_DIR", str(tmp_path))

    def no_network(path, timeout=0):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(inception_mod, "_download_inception", no_network)
    expected = tmp_path / INCEPTION_FILENAME
    with pytest.raises(FeatureWeightsMissing) as info:
        build_feature_extractor("inception")
    message = str(info.value)
    assert str(expected) in message and INCEPTION_URL in message
    assert "network unreachable" in message
    assert not expected.exists()

    expected.write_bytes(b"not a torchscript file")  # a broken download
    with pytest.raises(FeatureWeightsMissing, match="cannot be loaded"):
        build_feature_extractor("inception")
    with pytest.raises(ValueError, match="299"):
        build_feature_extractor("inception", image_size=64)


# ----------------------------------------------------------------------------- KID on real images


@pytest.fixture(scope="module")
def fashion_test():
    for folder in FASHION_DIRS:
        images = folder / "t10k-images-idx3-ubyte.gz"
        labels = folder / "t10k-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            return read_idx(images), read_idx(labels)
    pytest.skip(
        "Fashion-MNIST not found in data/01_raw/fashion-mnist or "
        "/usr/share/datasets/fashion-mnist: run the project setup first"
    )


def test_kid_separates_clients_on_fashion_mnist(fashion_test, extractor):
    images, labels = fashion_test
    rng = np.random.default_rng(0)
    client = rng.choice(np.flatnonzero(np.isin(labels, (0, 1))), 200, replace=False)
    other = rng.choice(np.flatnonzero(np.isin(labels, (7, 9))), 100, replace=False)
    noise = rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    f = extractor(np.concatenate([images[client], images[other], noise]))
    half_a, half_b, f_other, f_noise = f[:100], f[100:200], f[200:300], f[300:]

    kw = {"num_subsets": 50, "max_subset_size": 50, "seed": 0}
    same_mean, same_std = kid(half_a, half_b, **kw)
    other_mean, _ = kid(half_a, f_other, **kw)
    noise_mean, _ = kid(half_a, f_noise, **kw)
    assert same_std > 0
    assert abs(same_mean) < 2 * same_std
    assert other_mean > 10 * same_std and other_mean > same_mean + 10 * same_std
    assert noise_mean > other_mean


# ----------------------------------------------------------------------------- kid()


def test_kid_validation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(a, a[:1])
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(a, rng.normal(size=(10, 5)))
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kid(a, bad)
    with pytest.raises(ValueError, match="2-D"):
        kid(a[:, 0], a)
    with pytest.raises(ValueError, match="num_subsets"):
        kid(a, a, num_subsets=0)


def test_kid_matches_clean_fid_on_full_sets():
    kernel_distance = pytest.importorskip("cleanfid.fid").kernel_distance
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 16)), rng.normal(0.3, 1.0, size=(30, 16))
    # Subsets as large as the sets are permutations: the statistic is the same for every draw.
    mean, std = kid(a, b, num_subsets=3)
    assert mean == pytest.approx(kernel_distance(a, b, num_subsets=3), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_matches_clean_fid_with_the_same_subsets(monkeypatch):
    fid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 8)), rng.normal(0.2, 1.1, size=(30, 8))
    mean, std = kid(a, b, num_subsets=20, max_subset_size=12, seed=7)
    # Drive clean-fid's np.random.choice with the generator kid() uses: same subsets, same order.
    shared = np.random.default_rng(7)
    monkeypatch.setattr(
        fid.np.random, "choice", lambda n, m, replace=True: shared.choice(n, m, replace=replace)
    )
    expected = fid.kernel_distance(a, b, num_subsets=20, max_subset_size=12)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std > 0


def test_kid_is_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(60, 8))
    assert kid(a, b, num_subsets=10, max_subset_size=20, seed=5) == kid(
        a, b, num_subsets=10, max_subset_size=20, seed=5
    )
    assert kid(a, b, num_subsets=10, max_subset_size=20, seed=5) != kid(
        a, b, num_subsets=10, max_subset_size=20, seed=6
    )


def test_kid_per_subset_kernels_equal_precomputed(monkeypatch):
    import spire_pipeline.spire.kid as kid_mod

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(50, 8)), rng.normal(0.1, 1.0, size=(45, 8))
    precomputed = kid(a, b, num_subsets=10, max_subset_size=20)
    monkeypatch.setattr(kid_mod, "_FULL_GRAM_MAX", 0)  # the path used for large sets
    per_subset = kid(a, b, num_subsets=10, max_subset_size=20)
    np.testing.assert_allclose(per_subset, precomputed, rtol=1e-9, atol=1e-15)
