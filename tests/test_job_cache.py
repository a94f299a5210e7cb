"""Finished work cached by content (issue 16, item 3): an adaptation or a set of samples found
in the cache is exactly what computing it again gives, and any change of what determines it
(parameters, model weights, client images) misses the cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from spire_pipeline.spire import job_cache
from spire_pipeline.spire.config import AdaptationConfig, PretrainingConfig
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.job_cache import (
    JobCache,
    SampleRequest,
    adaptation_cache,
    cached_adapt,
    cached_samples,
    content_key,
    sample_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained() -> dict:
    cfg = PretrainingConfig.model_validate(
        dict(
            methods=["spire", "fedavg"],
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
            diffusion=dict(num_train_timesteps=50, sampler="ddim", sampler_steps=3),
            rounds=1,
            client_fraction=1.0,
            min_clients=1,
            local=dict(steps=1, batch_size=4),
        )
    )
    g = torch.Generator().manual_seed(0)
    clients = [ClientData(f"c{k}", torch.rand(8, 1, 16, 16, generator=g) * 2 - 1) for k in range(2)]
    return {m: pretrain(m, cfg, clients, progress=False)[0] for m in cfg.methods}


def new_client(seed: int = 1) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData("u0", torch.rand(12, 1, 16, 16, generator=g) * 2 - 1)


ADAPT = AdaptationConfig.model_validate(
    dict(local=dict(steps=4, batch_size=4), lora_rank=2, cache_dir=None)
)


def same_bundle(a, b) -> bool:
    (ta, ma), (tb, mb) = a.to_tensors(), b.to_tensors()
    return ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("method", ["spire", "lora", "full_finetune"])
def test_a_cached_adaptation_is_the_computed_one(method, pretrained, tmp_path) -> None:
    cache = adaptation_cache(tmp_path)
    first = cached_adapt(cache, method, pretrained, new_client(), ADAPT, snapshot_steps=[0, 2])
    assert (cache.hits, cache.misses) == (0, 1)
    again = cached_adapt(cache, method, pretrained, new_client(), ADAPT, snapshot_steps=[0, 2])
    assert (cache.hits, cache.misses) == (1, 1)
    assert same_bundle(again.bundle, first.bundle)
    assert again.snapshots.keys() == first.snapshots.keys() == {0, 2}
    assert all(same_bundle(again.snapshots[s], first.snapshots[s]) for s in (0, 2))
    assert again.result.losses == first.result.losses
    assert again.result.final_loss == first.result.final_loss
    assert (again.trained_params, again.total_params) == (first.trained_params, first.total_params)
    assert again.trained_pct == first.trained_pct and again.seconds == first.seconds
    assert again.result.params.keys() == first.result.params.keys()
    assert all(torch.equal(again.result.params[k], v) for k, v in first.result.params.items())


def test_what_determines_an_adaptation_is_in_its_key(pretrained, tmp_path) -> None:
    cache = adaptation_cache(tmp_path)
    cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT)
    other_lr = ADAPT.local.model_copy(update={"lr": 0.5})
    cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT, local=other_lr)
    cached_adapt(cache, "bitfit", pretrained, new_client(seed=2), ADAPT)  # other images
    moved = {**pretrained, "fedavg": pretrained["spire"]}  # other base weights
    cached_adapt(cache, "bitfit", moved, new_client(), ADAPT)
    cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT.model_copy(update={"seed": 3}))
    assert (cache.hits, cache.misses) == (0, 5)
    # what does not change the result (the methods list, the tuning grid) does not miss
    wider = ADAPT.model_copy(update={"methods": ["bitfit"]})
    cached_adapt(cache, "bitfit", pretrained, new_client(), wider)
    assert cache.hits == 1


def test_cached_samples_are_drawn_once(pretrained, tmp_path) -> None:
    bundle = pretrained["spire"]
    model, emb = bundle.build("c0")
    request = SampleRequest(6, 7, 2, 3, torch.device("cpu"), "fp32")
    calls = []

    def draw():
        calls.append(1)
        images = np.full((6, 16, 16), len(calls), np.uint8)
        return images.reshape(6, -1).astype(np.float32), images

    cache = sample_cache(tmp_path)
    f1, i1 = cached_samples(cache, model, emb, bundle, request, "ext", draw)
    f2, i2 = cached_samples(cache, model, emb, bundle, request, "ext", draw)
    assert len(calls) == 1 and np.array_equal(f1, f2) and np.array_equal(i1, i2)
    cached_samples(cache, model, emb * 2, bundle, request, "ext", draw)  # another condition
    cached_samples(cache, model, emb, bundle, request, "other-extractor", draw)
    later = SampleRequest(6, 8, 2, 3, torch.device("cpu"), "fp32")  # another seed
    cached_samples(cache, model, emb, bundle, later, "ext", draw)
    assert len(calls) == 4
    assert cached_samples(None, model, emb, bundle, request, "ext", draw)[1][0, 0, 0] == 5


def test_a_kill_during_a_write_leaves_no_entry(tmp_path) -> None:
    cache = JobCache.at(tmp_path, "x", ".bin")

    def dies(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.write("k", dies)
    assert cache.found("k") is None and list(cache.folder.iterdir()) == []
    assert JobCache.at(None, "x") is None


def test_keys_separate_values_and_types() -> None:
    assert content_key(1, "a") != content_key("1", "a") != content_key(1, "b")
    t = torch.zeros(3)
    assert content_key(t) != content_key(t.double()) != content_key(t.reshape(1, 3))
    assert content_key({"a": t}) == content_key({"a": torch.zeros(3)})
    assert job_cache.CACHE_FORMAT >= 1


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00" * len(data))


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_a_damaged_adaptation_entry_is_set_aside_and_recomputed(
    how, pretrained, tmp_path, caplog
) -> None:
    cache = adaptation_cache(tmp_path)
    first = cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT)
    (entry,) = cache.folder.iterdir()
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.cache_files"):
        again = cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT)
    assert (cache.hits, cache.misses) == (0, 2)  # recomputed, not reused
    assert same_bundle(again.bundle, first.bundle)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"cache entry {entry} is unreadable (")
    assert line.endswith(f"set aside as {entry.name}.corrupt, recomputing")
    assert entry.exists() and (entry.parent / f"{entry.name}.corrupt").exists()
    cached_adapt(cache, "bitfit", pretrained, new_client(), ADAPT)
    assert cache.hits == 1  # the recomputed entry is whole


def test_a_damaged_sample_entry_is_drawn_again(pretrained, tmp_path, caplog) -> None:
    bundle = pretrained["spire"]
    model, emb = bundle.build("c0")
    request = SampleRequest(6, 7, 2, 3, torch.device("cpu"), "fp32")
    calls = []

    def draw():
        calls.append(1)
        images = np.full((6, 16, 16), 3, np.uint8)
        return images.reshape(6, -1).astype(np.float32), images

    cache = sample_cache(tmp_path)
    first = cached_samples(cache, model, emb, bundle, request, "ext", draw)
    (entry,) = cache.folder.iterdir()
    _damage(entry, "truncated")
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.cache_files"):
        again = cached_samples(cache, model, emb, bundle, request, "ext", draw)
    assert len(calls) == 2 and np.array_equal(again[1], first[1])
    assert "is unreadable (" in caplog.text and cache.summary().startswith("0 of 2 reused")


def test_damaged_real_features_are_recomputed(tmp_path, caplog) -> None:
    from spire_pipeline.spire.evaluation import cached_features

    images = {"a": np.zeros((3, 4, 4), np.uint8), "b": np.ones((2, 4, 4), np.uint8)}
    calls = []

    def extractor(x: np.ndarray) -> np.ndarray:
        calls.append(1)
        return x.reshape(len(x), -1).astype(np.float32)

    first = cached_features(images, extractor, "ext", 4, tmp_path)
    (entry,) = tmp_path.iterdir()
    _damage(entry, "truncated")
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.cache_files"):
        again = cached_features(images, extractor, "ext", 4, tmp_path)
    assert len(calls) == 4 and all(np.array_equal(again[c], first[c]) for c in images)
    assert f"real-image features {entry} is unreadable (" in caplog.text
    cached_features(images, extractor, "ext", 4, tmp_path)
    assert len(calls) == 4  # the rewritten file is whole


def test_summary_counts_only_the_lookups_after_a_mark(tmp_path) -> None:
    cache = JobCache.at(tmp_path, "x", ".bin")
    cache.write("a", lambda tmp: tmp.write_bytes(b"1"))
    assert cache.found("a") and cache.found("b") is None
    mark = cache.mark()
    assert cache.found("a") is not None
    assert cache.summary().startswith("2 of 3 reused")
    assert cache.summary(mark).startswith("1 of 1 reused")
