"""The project's MLflow store: artifacts inside the project, no run left RUNNING forever."""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from spire_pipeline.tracking.run_info import TAG_HOST, TAG_PID

log = logging.getLogger(__name__)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else ``None``."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri.removeprefix("sqlite:///")))


def local_artifact_path(location: str) -> Path | None:
    """The folder of a local artifact location (a plain path or ``file:``), else ``None``."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location.startswith("/"):
        return Path(location)
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def relocate_artifacts(tracking_uri: str, project_path: Path) -> list[tuple[str, str]]:
    """Keep a project-local store's artifacts in the project, also after a copy or a move.

    MLflow stores each experiment's artifact location as an absolute path. When the store is
    a SQLite file inside ``project_path`` but an experiment still points at another folder's
    ``mlruns/<id>`` (the project was copied or moved), the experiment and its runs are
    pointed at ``<project_path>/mlruns/<id>``. Returns the ``(old, new)`` locations changed.
    """
    db = sqlite_file(tracking_uri)
    if db is None or not db.is_file() or not _inside(db, project_path):
        return []
    root = project_path.resolve() / "mlruns"
    changed = []
    with sqlite3.connect(db, timeout=30) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = conn.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        for experiment_id, old in rows:
            path = local_artifact_path(old or "")
            if path is None or path.parent.name != "mlruns" or _inside(path, project_path):
                continue
            new = str(root / path.name)
            if old.startswith("file:"):
                new = (root / path.name).as_uri()
            conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (new, experiment_id),
            )
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                if table in tables:
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, experiment_id, len(old), old),
                    )
            changed.append((old, new))
    for old, new in changed:
        log.info("MLflow artifacts of this copy of the project now go to %s (was %s)", new, old)
    return changed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_stale_runs(client: MlflowClient, experiment_id: str, host: str) -> list[str]:
    """Mark KILLED the RUNNING runs started on ``host`` by a process that no longer exists.

    A SIGKILLed ``kedro run`` cannot close its MLflow run; the next run does it here.
    """
    stale = []
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        tags = run.data.tags
        pid = tags.get(TAG_PID, "")
        if tags.get(TAG_HOST) == host and pid.isdigit() and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    if stale:
        log.info("Marked %d MLflow run(s) of killed processes as KILLED", len(stale))
    return stale


class OpenRuns:
    """The MLflow runs this process opened, closed with a status if the process ends first.

    Registered with ``atexit`` after MLflow's own handler, so it runs first: an interrupted
    run ends KILLED instead of being closed as FINISHED (MLflow's default) or left RUNNING.
    """

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}  # run id -> tracking URI
        self._lock = threading.Lock()

    def add(self, run_id: str, tracking_uri: str) -> None:
        with self._lock:
            self._runs[run_id] = tracking_uri

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def close_all(self, status: str = "KILLED") -> list[str]:
        """End every run still open with ``status``; return their ids."""
        with self._lock:
            runs, self._runs = dict(self._runs), {}
        for run_id, uri in runs.items():
            try:
                MlflowClient(tracking_uri=uri).set_terminated(run_id, status)
            except Exception as exc:  # the process is ending: report, do not raise
                log.warning("Could not mark MLflow run %s %s: %s", run_id, status, exc)
        active = mlflow.active_run()
        while active is not None and active.info.run_id in runs:
            mlflow.end_run(status)
            active = mlflow.active_run()
        return list(runs)


OPEN_RUNS = OpenRuns()
atexit.register(OPEN_RUNS.close_all, "KILLED")
