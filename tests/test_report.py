"""The run report stands alone: metadata, KID explained with a real-against-real reference,
plain column names, every claim listed, figures next to it; saved per run and at a stable path."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, Version
from kedro.pipeline import Node, Pipeline
from matplotlib.figure import Figure

from spire_pipeline.datasets import FigureDataset, ReportDataset
from spire_pipeline.hooks import RunMetadataHook, run_metadata
from spire_pipeline.spire.config import KIDConfig
from spire_pipeline.spire.evaluation import real_reference
from spire_pipeline.spire.report import (
    ROBUSTNESS_COMMAND,
    _parameters_table,
    build_report,
    claims_with_robustness,
)

PNG = b"\x89PNG\r\n\x1a\n fake"
EXTRACTOR = "efficientnet_lite0_64px"
METADATA = {
    "date": "2026-11-28 12:00:00",
    "env": "quick",
    "pipeline": "__default__",
    "git_commit": "0123456789ab",
    "mlflow_run_id": "a1b2c3",
    "save_version": "2026-11-28T12.00.00.000Z",
}


def tables() -> dict:
    partition = pd.DataFrame(
        {
            "client": ["seen_00", "unseen_00"],
            "role": ["seen", "unseen"],
            "n_train": [240, 64],
            "n_test": [60, 48],
            **{f"class_{k}": [150 * (k in (4, 6)), 56 * (k in (1, 8))] for k in range(10)},
        }
    )
    history = pd.DataFrame(
        {
            "method": ["spire", "spire"],
            "round": [0, 1],
            "loss_mean": [0.7, 0.5],
            "seconds": [1.0, 1.0],
            "bytes_up": [10, 10],
        }
    )
    summary = pd.DataFrame(
        {
            "phase": ["pretrained"],
            "role": ["seen"],
            "method": ["spire"],
            "clients": [1],
            "kid_median": [26.8],
            "kid_mean": [26.8],
            "kid_worst": [26.8],
            "extractor": [EXTRACTOR],
        }
    )
    reference = pd.DataFrame(
        {"client": ["seen_00", "unseen_00"], "kid_mean": [-0.5, 0.25], "extractor": EXTRACTOR}
    )
    unseen = pd.DataFrame(
        {"method": ["spire"], "trained_params": [32], "kid_median": [22.3], "extractor": EXTRACTOR}
    )
    forgetting = pd.DataFrame({"method": ["spire"], "difference": [0.0], "extractor": EXTRACTOR})
    slopes = pd.DataFrame(
        {"axis": ["dim"], "error": ["err_ddpm_true"], "slope": [0.02], "ci_low": [-0.1]}
    )
    claims = pd.DataFrame(
        {
            "claim": ["1. pretraining", "2. unseen clients", "5. theory"],
            "measured": ["a", "b", "c"],
            "holds": [True, False, True],
        }
    )
    return dict(
        claims=claims,
        partition_table=partition,
        pretraining_history=history,
        kid_summary=summary,
        kid_reference=reference,
        unseen_client_table=unseen,
        forgetting_table=forgetting,
        gmm_theory_slopes=slopes,
    )


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]
FASHION += ["Bag", "Ankle boot"]


def report(**overrides) -> dict:
    args = dict(
        metadata=METADATA,
        parameters={"kid_evaluation": {"num_subsets": 50, "max_subset_size": 50}},
        dataset_name="Fashion-MNIST",
        class_names=FASHION,
        figures={
            "kid_bar_chart": PNG,
            "efficiency": PNG,
            "kid_sample_grids": {"seen_00": PNG, "unseen_00": PNG},
        },
        **tables(),
    )
    return build_report(**(args | overrides))


def test_report_names_the_run_and_explains_kid_with_a_reference() -> None:
    text = report()["report.md"]
    for value in METADATA.values():
        assert value in text
    assert "Fashion-MNIST" in text
    assert "Lower is better" in text and "not multiplied by 10³" in text
    # the real-against-real median (-0.125) and its range
    assert "-0.125" in text and "-0.5 to 0.25" in text


def test_report_uses_plain_names_and_dataset_class_names() -> None:
    text = report()["report.md"]
    assert "median KID" in text and "kid_median" not in text
    assert "error of DDPM π vs true π" in text and "err_ddpm_true" not in text
    assert "| Coat |" in text or "Coat |" in text
    assert "after federated pretraining" in text  # phase in words
    assert EXTRACTOR not in text.split("## Claims")[1]  # stated once, in words, above


def test_every_linked_figure_is_in_the_report_folder() -> None:
    files = report()
    links = re.findall(r"\]\((figures/[^)]+)\)", files["report.md"])
    assert (
        "figures/kid_bar_chart.png" in links and "figures/kid_sample_grids/unseen_00.png" in links
    )
    assert "figures/kid_sample_grids/seen_00.png" in links
    for link in links:
        assert files[link] == PNG, link
    # figures not produced are said so, not linked
    assert "figure `partition_heatmap` not produced" in files["report.md"]


def test_claim_four_is_listed_with_its_command_when_absent() -> None:
    text = report()["report.md"]
    (row,) = [line for line in text.splitlines() if line.startswith("| 4.")]
    assert ROBUSTNESS_COMMAND in row
    claims = claims_with_robustness(tables()["claims"])
    assert list(claims["claim"].str[0]) == ["1", "2", "4", "5"]
    present = pd.DataFrame({"claim": ["4. robustness"], "measured": ["x"], "holds": [True]})
    assert len(claims_with_robustness(present)) == 1


def test_claims_render_with_whatever_columns_they_have() -> None:
    claims = pd.DataFrame(
        {
            "claim": ["2. unseen clients"],
            "verdict": ["inconclusive"],
            "effect": [-1.5],
            "ci_low": [-3.0],
            "ci_high": [0.2],
            "n_clients": [4],
        }
    )
    text = report(claims=claims)["report.md"]
    section = text.split("## Claims")[1].split("##")[0]
    assert "| claim | verdict | effect (SPIRE - baseline) | CI low | CI high | clients |" in section
    assert "inconclusive" in section and ROBUSTNESS_COMMAND in section


def test_real_reference_is_about_zero_for_two_halves_of_one_distribution() -> None:
    rng = np.random.default_rng(0)
    feats = {"a": rng.normal(size=(200, 16)), "b": rng.normal(size=(3, 16))}
    cfg = KIDConfig(num_subsets=20, max_subset_size=50)
    table = real_reference(feats, {"a": "seen"}, cfg, EXTRACTOR)
    assert list(table["client"]) == ["a"]  # too few images in b to halve
    (row,) = table.itertuples()
    assert row.n_half == 100 and row.subset_size == 50 and row.role == "seen"
    assert abs(row.kid_mean) < 3 * row.kid_std
    assert real_reference(feats, {}, cfg, "").equals(real_reference(feats, {}, cfg, ""))


# ----------------------------------------------------------------------------- datasets


def test_report_dataset_saves_a_version_and_replaces_latest(tmp_path) -> None:
    def dataset(save):
        return ReportDataset(
            path=str(tmp_path / "report"),
            latest=str(tmp_path / "latest"),
            version=Version(None, save),
        )

    first = dataset("v1")
    first.save({"report.md": "one ![f](figures/a.png)", "figures/a.png": PNG})
    second = dataset("v2")
    second.save({"report.md": "two", "figures/b.png": PNG})
    assert (tmp_path / "report" / "v1" / "figures" / "a.png").read_bytes() == PNG
    assert (tmp_path / "report" / "v2" / "report.md").read_text() == "two"
    assert (tmp_path / "latest" / "report.md").read_text() == "two"
    assert not (tmp_path / "latest" / "figures" / "a.png").exists()  # no stale figures
    assert second.saved_file == tmp_path / "report" / "v2" / "report.md"
    assert dataset(None).load() == "two"
    with pytest.raises(Exception, match="main file"):
        dataset("v3").save({"figures/a.png": PNG})
    with pytest.raises(Exception, match="outside"):
        dataset("v4").save({"report.md": "x", "../escape.md": "x"})
    assert not (tmp_path / "report" / "v4").exists()


def test_figure_dataset_loads_back_the_saved_png(tmp_path) -> None:
    ds = FigureDataset(filepath=str(tmp_path / "f.png"), version=Version(None, "v1"))
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    ds.save(fig)
    data = FigureDataset(filepath=str(tmp_path / "f.png"), version=Version(None, None)).load()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- hook


def test_run_metadata_hook_fills_the_catalog_and_logs_the_report_last(tmp_path, caplog) -> None:
    def write(meta):
        return {"report.md": f"env {meta['env']}"}

    pipeline = Pipeline([Node(write, "run_metadata", "run_report", name="write")])
    report_ds = ReportDataset(
        path=str(tmp_path / "report"), latest=str(tmp_path / "latest"), version=Version(None, "v")
    )
    catalog = DataCatalog({"run_report": report_ds})
    hook = RunMetadataHook()
    params = {"env": "quick", "project_path": str(tmp_path), "run_id": "v"}
    hook.before_pipeline_run(run_params=params, pipeline=pipeline, catalog=catalog)
    meta = catalog.load("run_metadata")
    assert meta["env"] == "quick" and meta["save_version"] == "v" and meta["date"]
    assert "not a git checkout" in meta["git_commit"]
    catalog.save("run_report", write(meta))
    hook.after_dataset_saved(dataset_name="run_report", data=None, node=None)
    with caplog.at_level(logging.INFO, logger="spire_pipeline.hooks"):
        hook.after_pipeline_run(
            run_params=params, run_result={}, pipeline=pipeline, catalog=catalog
        )
    assert caplog.records[-1].getMessage() == (
        "Report: latest/report.md (this run's copy: report/v/report.md)"
    )
    assert run_metadata({})["env"].startswith("local")


def test_the_parameters_table_shows_each_entry_of_a_mapping_parameter() -> None:
    table = _parameters_table(
        {
            "federated_pretraining": {
                "rounds": 250,
                "method_local_steps": {"fedavg": 20, "fedper": 20},
                "local": {"steps": 2, "steps_extra": 9},
            }
        }
    )
    assert "| federated_pretraining.method_local_steps.fedavg | 20 |" in table
    assert "| federated_pretraining.method_local_steps.fedper | 20 |" in table
    assert "| federated_pretraining.local.steps | 2 |" in table
    assert "steps_extra" not in table
