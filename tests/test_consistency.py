"""Inconsistent combinations of parameters (issue 16, item 1): rejected before any node runs,
with one message naming the key, the value and what is allowed; and a property-based test
(hypothesis) that every generated partitioning and pretraining configuration is either
rejected that way or accepted and then partitioned correctly, never another exception.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kedro.io import DataCatalog

from spire_pipeline.datasets.image_datasets import IDXImageDataset, NpzImageDataset
from spire_pipeline.hooks import ParameterValidationHook, pipeline_stages, raw_data, validate_all
from spire_pipeline.pipeline_registry import DEFAULT_PIPELINES
from spire_pipeline.run_checks import run_stages
from spire_pipeline.spire.config import PartitionConfig, PretrainingConfig
from spire_pipeline.spire.consistency import RawData, check_consistency, consistency_problems
from spire_pipeline.spire.federated import select_clients
from spire_pipeline.spire.idx import idx_shape, write_idx
from spire_pipeline.spire.partition import partition
from spire_pipeline.spire.validation import ParameterError

#: conf/quick's sections that the checks read
QUICK = {
    "data_partitioning": dict(
        seed=0,
        scheme="shards",
        classes_per_client=2,
        num_seen_clients=4,
        num_tuning_clients=2,
        num_unseen_clients=3,
        seen_client_size=300,
        unseen_train_size=64,
        test_fraction=0.2,
        min_test_size=48,
        validation_fraction=0.1,
    ),
    "federated_pretraining": dict(
        methods=["spire", "fedavg", "fedper", "local"],
        backbone=dict(block_out_channels=[8, 16], norm_num_groups=4),
        diffusion=dict(num_train_timesteps=1000, sampler="ddim", sampler_steps=5),
        client_fraction=0.5,
        min_clients=2,
    ),
    "client_adaptation": dict(methods=["spire", "full_finetune", "lora", "bitfit", "head"]),
    "kid_evaluation": dict(sampler_steps=5, forgetting_clients=2),
    "robustness_sweep": dict(methods=["spire", "bitfit"], clients=1),
    "generate": dict(method="spire"),
    "diffusers_export": dict(method="spire"),
}
EVERY_STAGE = (*DEFAULT_PIPELINES, "robustness_sweep", "generate", "diffusers_export")


def with_value(path: str, value) -> dict:
    params = copy.deepcopy(QUICK)
    *parents, key = path.split(".")
    node = params
    for p in parents:
        node = node.setdefault(p, {})
    node[key] = value
    return params


# (parameter changed, its value, what the message must say)
INCONSISTENT = [
    ("federated_pretraining.min_clients", 5, "more than the 4 seen clients"),
    ("data_partitioning.num_seen_clients", 1, "min_clients = 2: more than the 1 seen clients"),
    ("federated_pretraining.diffusion.sampler_steps", 1001, "allowed: 1 to 1000"),
    ("federated_pretraining.diffusion.num_train_timesteps", 4, "sampler_steps = 5: more sampler"),
    ("kid_evaluation.sampler_steps", 2000, "more sampler steps than the 1000 training"),
    ("generate.steps", 1500, "generate.steps = 1500"),
    ("federated_pretraining.methods", ["spire"], "bitfit, head start from the pretrained 'fedavg'"),
    ("generate.method", "fedprox", "generate.method = 'fedprox': unknown method"),
    ("diffusers_export.method", "fedavg", "not a client-conditioned pretraining method"),
    ("data_partitioning.num_unseen_clients", 0, "no evaluation clients"),
    ("kid_evaluation.forgetting_clients", 4, "more than the 3 evaluation clients"),
    ("robustness_sweep.clients", 3, "more than the 2 tuning clients"),
    ("data_partitioning.num_tuning_clients", 0, "robustness_sweep runs on the tuning clients"),
    ("data_partitioning.test_fraction", 0.999, "no train image is left"),
    ("federated_pretraining.backbone.block_out_channels", [8, 8, 8, 8], "a multiple of 8"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), INCONSISTENT, ids=[c[0] for c in INCONSISTENT]
)
def test_inconsistent_combination_is_named_in_one_line(path, value, expected) -> None:
    check_consistency(QUICK, EVERY_STAGE)  # the starting point is consistent
    with pytest.raises(ParameterError) as err:
        validate_all(with_value(path, value), EVERY_STAGE)
    message = str(err.value)
    assert expected in message, message
    assert message.startswith("Invalid parameters: parameter ") and "\n" not in message
    assert "(allowed: " in message, message


EMPTY = [
    "robustness_sweep.learning_rates",
    "robustness_sweep.epochs",
    "robustness_sweep.methods",
    "client_adaptation.methods",
    "client_adaptation.tuning.learning_rates",
    "client_adaptation.tuning.epochs",
]


@pytest.mark.parametrize("path", EMPTY)
def test_an_empty_grid_or_method_list_is_rejected(path) -> None:
    with pytest.raises(ParameterError) as err:
        validate_all(with_value(path, []), EVERY_STAGE)
    assert f"parameter {path} = []: List should have at least 1 item" in str(err.value)


def test_checks_apply_only_to_the_pipelines_that_run() -> None:
    no_evaluation = with_value("data_partitioning.num_unseen_clients", 0)
    assert consistency_problems(no_evaluation, ["data_partitioning", "federated_pretraining"]) == []
    assert consistency_problems(no_evaluation, ["client_adaptation"])
    sweep = with_value("robustness_sweep.clients", 9)
    assert consistency_problems(sweep, DEFAULT_PIPELINES) == []
    assert consistency_problems(sweep, ["robustness_sweep"])
    # a section that is not configured is not checked against the others
    assert (
        consistency_problems({"data_partitioning": QUICK["data_partitioning"]}, EVERY_STAGE) == []
    )


def test_run_stages_expand_the_main_job() -> None:
    assert run_stages(["__default__"]) == set(DEFAULT_PIPELINES)
    assert run_stages(["robustness_sweep"]) == {"robustness_sweep"}
    assert pipeline_stages(None) is None


def _write_npz(path, n: int, size: int = 8, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        images=rng.integers(0, 255, (n, size, size), dtype=np.uint8),
        labels=np.arange(n) % classes,
    )


def test_hook_checks_the_partition_against_the_data_before_any_node(tmp_path) -> None:
    _write_npz(tmp_path / "train.npz", 1400)
    _write_npz(tmp_path / "test.npz", 200)
    catalog = DataCatalog(
        {
            "raw_train": NpzImageDataset(filepath=str(tmp_path / "train.npz")),
            "raw_test": NpzImageDataset(filepath=str(tmp_path / "test.npz")),
        }
    )
    data = raw_data(catalog, None)
    assert data is not None and len(data.labels) == 1600 and data.image_shape == (8, 8, 1)
    assert raw_data(catalog, {"kid_evaluation"}) is None  # the partition is read, not made
    fits = with_value("data_partitioning.seen_client_size", 100)
    fits["federated_pretraining"]["backbone"]["image_size"] = 8
    catalog["parameters"] = fits
    ParameterValidationHook().before_pipeline_run(run_params={}, pipeline=None, catalog=catalog)
    too_big = copy.deepcopy(fits)
    too_big["data_partitioning"]["seen_client_size"] = 300  # 4 x 300 + 5 x 112 > 1600
    catalog["parameters"] = too_big
    with pytest.raises(ParameterError, match=r"seen_client_size = 300: asks for more images"):
        ParameterValidationHook().before_pipeline_run(run_params={}, pipeline=None, catalog=catalog)
    wrong_size = copy.deepcopy(fits)
    wrong_size["federated_pretraining"]["backbone"]["image_size"] = 28
    catalog["parameters"] = wrong_size
    with pytest.raises(ParameterError, match=r"image_size = 28: the images of .* are 8 x 8"):
        ParameterValidationHook().before_pipeline_run(run_params={}, pipeline=None, catalog=catalog)


def test_idx_peek_reads_labels_and_the_header_only(tmp_path) -> None:
    images = np.zeros((5, 6, 7), np.uint8)
    write_idx(tmp_path / "im.gz", images)
    write_idx(tmp_path / "lb.gz", np.arange(5, dtype=np.uint8))
    assert idx_shape(tmp_path / "im.gz") == (5, 6, 7)
    ds = IDXImageDataset(
        images_filepath=str(tmp_path / "im.gz"), labels_filepath=str(tmp_path / "lb.gz")
    )
    labels, shape = ds.peek()
    assert labels.tolist() == [0, 1, 2, 3, 4] and shape == (6, 7, 1)


# ----------------------------------------------------------------------------- property test

#: a small synthetic image set: 5 unequal classes, 8 x 8 grey images
LABELS = np.repeat(np.arange(5), [400, 300, 200, 150, 100])
IMAGES = np.arange(len(LABELS), dtype=np.int64).reshape(-1, 1, 1).astype(np.uint8).repeat(8, 1)
IMAGES = np.ascontiguousarray(IMAGES.repeat(8, 2))
DATA = RawData(LABELS, (8, 8, 1), source="the synthetic set")
STAGES = ("data_partitioning", "federated_pretraining")
NAMED_KEY = re.compile(r"parameter (data_partitioning|federated_pretraining)(\.\w+)+( = |: )")

#: values within each key's valid range (many combinations still do not fit the data) ...
GOOD_PARTITIONING = {
    "seed": st.integers(0, 2**16),
    "scheme": st.sampled_from(["shards", "dirichlet"]),
    "alpha": st.floats(1e-3, 10),
    "classes_per_client": st.integers(1, 5),
    "num_seen_clients": st.integers(1, 8),
    "num_unseen_clients": st.integers(0, 4),
    "num_tuning_clients": st.integers(0, 3),
    "seen_client_size": st.integers(2, 100) | st.integers(2, 100) | st.none(),
    "unseen_train_size": st.integers(1, 30),
    "test_fraction": st.floats(0.01, 0.9),
    "min_test_size": st.integers(1, 20),
    "validation_fraction": st.floats(0, 0.9),
}
GOOD_PRETRAINING = {
    "client_fraction": st.floats(0.01, 1),
    "min_clients": st.integers(1, 4),
    "rounds": st.integers(1, 5),
    "methods": st.lists(st.sampled_from(["spire", "fedavg", "local"]), min_size=1, unique=True),
}
#: ... and values outside it (or of the wrong type), one of which may replace a good one
ANY_BAD = st.sampled_from([-1, 0, "x", None, 1e9, [1]])
BAD_PARTITIONING = {
    "scheme": st.just("random"),
    "alpha": st.sampled_from([0, -0.5]) | ANY_BAD,
    "num_seen_clients": st.integers(-2, 0) | ANY_BAD,
    "num_unseen_clients": st.just(-1) | ANY_BAD,
    "seen_client_size": st.integers(-5, 0) | st.integers(1000, 10**6) | ANY_BAD,
    "test_fraction": st.sampled_from([0, 1, 1.5, -0.1]) | ANY_BAD,
    "validation_fraction": st.sampled_from([1, -0.1]) | ANY_BAD,
    "classes_per_client": st.integers(6, 20) | ANY_BAD,
    "alpah": st.just(0.1),  # a typo
}
BAD_PRETRAINING = {
    "client_fraction": st.sampled_from([0, 1.5, -0.1]) | ANY_BAD,
    "min_clients": st.integers(9, 50) | ANY_BAD,
    "rounds": ANY_BAD,
    "methods": st.just(["spire", "fedprox"]) | st.just([]) | st.just(["spire", "spire"]),
    "roundz": st.just(3),  # a typo
}


@st.composite
def configurations(draw) -> tuple[dict, dict]:
    """A partitioning and a pretraining section: keys in range (each may be left out: its
    default), then perhaps one key of either section replaced by a bad value."""
    sizes = ("num_seen_clients", "seen_client_size", "unseen_train_size", "min_test_size")
    dp = draw(
        st.fixed_dictionaries(
            {k: GOOD_PARTITIONING[k] for k in sizes},  # the defaults need 20,000+ images
            optional={k: v for k, v in GOOD_PARTITIONING.items() if k not in sizes},
        )
    )
    fp = draw(st.fixed_dictionaries({}, optional=GOOD_PRETRAINING))
    steps = draw(st.integers(10, 1000)), draw(st.integers(1, 50) | st.integers(900, 1100))
    fp |= {
        "backbone": dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=8),
        "diffusion": dict(num_train_timesteps=steps[0], sampler_steps=steps[1]),
    }
    which = draw(st.sampled_from(["none", "none", "partitioning", "pretraining"]))
    if which != "none":
        section, bad = (dp, BAD_PARTITIONING) if which == "partitioning" else (fp, BAD_PRETRAINING)
        key = draw(st.sampled_from(sorted(bad)))
        section[key] = draw(bad[key])
    return dp, fp


def _check_partition(cfg: PartitionConfig) -> None:
    splits = partition(IMAGES, LABELS, cfg)
    roles = [s.role for s in splits]
    assert roles.count("seen") == cfg.num_seen_clients
    assert roles.count("tuning") == cfg.num_tuning_clients
    assert roles.count("unseen") == cfg.num_unseen_clients
    used = np.concatenate([np.r_[s.train_index, s.val_index, s.test_index] for s in splits])
    assert len(np.unique(used)) == len(used) <= len(LABELS)  # every image at most once
    for s in splits:
        assert len(s.train_index) >= 1 and len(s.test_index) >= 1, s.client
        assert (LABELS[s.train_index] == s.train_labels).all()
        assert (IMAGES[s.test_index] == s.test_images).all()
        if s.role == "seen" and cfg.seen_client_size is not None:
            assert len(s.train_index) + len(s.val_index) + len(s.test_index) == (
                cfg.seen_client_size
            )
        if s.role != "seen":
            assert len(s.train_index) == cfg.unseen_train_size and len(s.val_index) == 0
        if cfg.scheme == "shards":
            labels = np.r_[s.train_labels, s.val_labels, s.test_labels]
            assert len(np.unique(labels)) <= cfg.classes_per_client


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(configurations())
def test_every_configuration_is_rejected_in_one_line_or_partitioned_correctly(config) -> None:
    dp, fp = config
    params = {"data_partitioning": dp, "federated_pretraining": fp}
    try:
        validate_all(params, STAGES, DATA)
    except ParameterError as exc:
        message = str(exc)
        assert "\n" not in message and NAMED_KEY.search(message), message
        event("rejected: " + re.sub(r" = .*", "", message.split("parameter ", 1)[1]))
        return
    event("accepted")
    cfg = PartitionConfig.model_validate(dp)
    _check_partition(cfg)
    fp_cfg = PretrainingConfig.model_validate(fp)
    assert fp_cfg.diffusion.sampler_steps <= fp_cfg.diffusion.num_train_timesteps
    for r in range(3):
        chosen = select_clients(fp_cfg, r, cfg.num_seen_clients)
        assert fp_cfg.min_clients <= len(chosen) <= cfg.num_seen_clients
        assert len(set(chosen)) == len(chosen)
