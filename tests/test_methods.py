"""The method specs: one definition per method, read by engines, adaptation and evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spire_pipeline.spire.config import BackboneConfig
from spire_pipeline.spire.methods import (
    ADAPTATION,
    ADAPTATION_METHODS,
    HEAD_PREFIXES,
    PRETRAINING,
    PRETRAINING_METHODS,
)
from spire_pipeline.spire.model import build_backbone

SRC = Path(__file__).resolve().parents[1] / "src" / "spire_pipeline"
ALL_NAMES = set(PRETRAINING_METHODS) | set(ADAPTATION_METHODS)


@pytest.fixture(scope="module")
def model():
    return build_backbone(BackboneConfig(block_out_channels=[8, 16], norm_num_groups=4))


def test_pretraining_specs_say_what_is_shared_and_kept(model):
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.startswith(HEAD_PREFIXES)]
    assert head
    spire, fedavg = PRETRAINING["spire"], PRETRAINING["fedavg"]
    fedper, local, central = PRETRAINING["fedper"], PRETRAINING["local"], PRETRAINING["centralized"]
    assert spire.shared_names(model) == names and spire.personal_names(model) == []
    assert spire.conditional and spire.federated and spire.per_client
    assert fedavg.shared_names(model) == names and not fedavg.per_client
    assert fedper.personal_names(model) == head
    assert fedper.shared_names(model) == [n for n in names if n not in head]
    assert local.shared_names(model) == [] and not local.federated and local.per_client
    assert set(local.personal_names(model)) == set(model.state_dict())
    assert central.shared_names(model) == [] and central.pooled and central.conditional


def test_adaptation_specs_say_what_is_trained_and_where_it_starts(model):
    names = [n for n, _ in model.named_parameters()]
    assert {m: s.base for m, s in ADAPTATION.items()} == {
        "spire": "spire",
        "full_finetune": "fedavg",
        "lora": "fedavg",
        "bitfit": "fedavg",
        "head": "fedavg",
        "scratch": None,
    }
    assert ADAPTATION["spire"].trainable_names(model) == []
    assert ADAPTATION["full_finetune"].trainable_names(model) == names
    assert all(n.endswith(".bias") for n in ADAPTATION["bitfit"].trainable_names(model))
    assert ADAPTATION["head"].trainable_names(model) == [
        n for n in names if n.startswith(HEAD_PREFIXES)
    ]
    shares = {m for m, s in ADAPTATION.items() if s.shares_weights}
    assert shares == {"full_finetune", "lora", "bitfit", "head"}
    assert {m for m, s in ADAPTATION.items() if s.conditional} == {"spire"}
    for spec in ADAPTATION.values():
        assert spec.base is None or spec.base in PRETRAINING


def test_no_module_outside_the_specs_tests_a_method_name():
    """``method == "spire"`` and friends belong in methods.py only (one definition per method)."""
    names = "|".join(sorted(ALL_NAMES))
    pattern = re.compile(
        rf"""(==|!=|\bin\b|\bnot in\b)\s*[\(\[\{{]?\s*["']({names})["']"""
        rf"""|["']({names})["']\s*(==|!=)"""
    )
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "methods.py":
            continue
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{k}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
