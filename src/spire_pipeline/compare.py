"""``make compare``: the methods of the latest ``kedro run`` side by side, in a terminal.

Reads the project's MLflow store (``conf/*/mlflow.yml``), finds the newest parent run that has
method child runs (or ``--run-id``) and prints one row per method with the shared metric names
(:mod:`spire_pipeline.tracking.method_metrics`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

from spire_pipeline.tracking.method_metrics import metric_order, short_name

EXPERIMENT = "spire_pipeline"
DEFAULT_URI = "sqlite:///mlflow.db"
#: shorter column names for the terminal
SHORT = {
    "kid_seen_after_adaptation_median": "kid_seen_after_adapt",
    "pretrain_communication_mb": "pretrain_mb",
}


def project_tracking_uri(project: Path) -> str:
    """``server.mlflow_tracking_uri`` of ``conf/local`` over ``conf/base``, made absolute."""
    uri = None
    for env in ("base", "local"):
        path = project / "conf" / env / "mlflow.yml"
        if path.is_file():
            server = (yaml.safe_load(path.read_text()) or {}).get("server") or {}
            uri = server.get("mlflow_tracking_uri") or uri
    uri = uri or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(project / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def column_name(metric: str) -> str:
    """``kid_seen_median.<extractor>`` -> ``kid_seen_median``; a few names shortened."""
    short = short_name(metric)
    return SHORT.get(short, short)


def method_table(children) -> tuple[pd.DataFrame, list[str]]:
    """One row per child run: method, phase and every metric; plus the KID extractors."""
    metrics = sorted({k for run in children for k in run.data.metrics}, key=metric_order)
    extractors = sorted({m.split(".", 1)[1] for m in metrics if "." in m})
    rows = []
    for run in children:
        row = {
            "method": run.data.tags.get("method", run.info.run_name),
            "phase": run.data.tags.get("phase", ""),
        }
        row.update({column_name(m): run.data.metrics.get(m) for m in metrics})
        rows.append(row)
    columns = ["method", "phase", *dict.fromkeys(column_name(m) for m in metrics)]
    return pd.DataFrame(rows, columns=columns), extractors


def _cell(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    if isinstance(value, str):
        return value
    if float(value).is_integer() and abs(value) < 1e9:
        return f"{value:.0f}"
    return f"{value:.4g}"


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Methods as columns, metrics as rows (like MLflow's compare view), cells formatted."""
    out = table.set_index("method").T.map(_cell)
    out.columns.name = None
    return out


def find_runs(client, run_id: str | None):
    """``(parent, children)``: ``run_id`` or the newest parent run with method child runs."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None, []
    ids = [experiment.experiment_id]
    if run_id is None:
        latest = client.search_runs(
            ids, "tags.method != ''", max_results=1, order_by=["attributes.start_time DESC"]
        )
        if not latest:
            return None, []
        run_id = latest[0].data.tags["mlflow.parentRunId"]
    children = client.search_runs(ids, f"tags.mlflow.parentRunId = '{run_id}'")
    return client.get_run(run_id), sorted(children, key=lambda r: r.info.start_time)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spire-pipeline compare", description=__doc__)
    parser.add_argument("--run-id", help="a parent run's id (default: the latest)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the project's)")
    parser.add_argument("--project", default=".", help="project folder (default: .)")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    project = Path(args.project).resolve()
    uri = args.tracking_uri or project_tracking_uri(project)
    parent, children = find_runs(MlflowClient(tracking_uri=uri), args.run_id)
    if parent is None or not children:
        print(
            f"No run with method runs in {uri}: run `make run` (or `kedro run --env quick`)",
            file=sys.stderr,
        )
        return 1
    table, extractors = method_table(children)
    tags = parent.data.tags
    started = pd.Timestamp(parent.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"MLflow run {parent.info.run_name!r} ({parent.info.run_id}, {parent.info.status}, "
        f"started {started})"
    )
    print(
        f"commit {tags.get('git_commit', 'unknown')[:12]}, dataset {tags.get('dataset', '?')}, "
        f"partition {tags.get('partition_scheme', '?')}"
    )
    print(
        f"KID on {', '.join(extractors) or '?'} features, lower is better; forgetting = "
        "seen clients' KID after minus before adapting to new ones (lower is better)"
    )
    print(side_by_side(table).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
