"""Ctrl-C and SIGTERM never land inside a database write (which left the MLflow store locked)."""

from __future__ import annotations

import signal
import time
import traceback

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from spire_pipeline.interrupts import Interrupts, Terminated, in_database_code

DATABASE_CALL = """
def write(signum, steps):
    signal.raise_signal(signum)  # arrives here, inside "database code"
    for _ in range(steps):
        time.sleep(0.01)
    return "written"
"""


def _database_function():
    namespace = {"__name__": "sqlalchemy.engine.fake", "signal": signal, "time": time}
    exec(DATABASE_CALL, namespace)  # a function whose frames belong to a sqlalchemy module
    return namespace["write"]


@pytest.fixture
def interrupts():
    caught = Interrupts()
    caught.catch()
    yield caught
    caught.release()


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_signal_in_database_code_lands_after_it(interrupts, signum, raised) -> None:
    write = _database_function()
    finished = []
    with pytest.raises(raised) as caught:
        finished.append(write(signum, steps=3))
        time.sleep(5)  # the put-off signal lands here
    assert finished == ["written"]
    assert not any(f.name == "write" for f in traceback.extract_tb(caught.value.__traceback__))


def test_signal_elsewhere_lands_at_once(interrupts) -> None:
    with pytest.raises(Terminated):
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")


def test_release_restores_the_previous_handlers() -> None:
    before = {s: signal.getsignal(s) for s in Interrupts.SIGNALS}
    caught = Interrupts()
    caught.catch()
    assert all(signal.getsignal(s) is not before[s] for s in Interrupts.SIGNALS)
    caught.release()
    assert {s: signal.getsignal(s) for s in Interrupts.SIGNALS} == before


def test_in_database_code_looks_at_the_callers() -> None:
    namespace = {"__name__": "sqlite3.dbapi2"}
    exec("import sys\ndef frame():\n    return sys._getframe()", namespace)
    assert in_database_code(namespace["frame"]())
    assert not in_database_code(__import__("sys")._getframe())


def test_sigterm_during_an_mlflow_write_leaves_the_store_usable(interrupts, tmp_path) -> None:
    """SIGTERM raised while SQLAlchemy runs an INSERT: the write finishes, then the run closes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("interrupts"))
    armed = [True]

    def raise_sigterm(conn, cursor, statement, *args) -> None:
        if armed[0] and statement.lstrip().upper().startswith("INSERT"):
            armed[0] = False
            signal.raise_signal(signal.SIGTERM)

    event.listen(Engine, "after_cursor_execute", raise_sigterm)
    try:
        with pytest.raises(Terminated) as caught:
            client.log_metric(run.info.run_id, "loss", 1.0)
            time.sleep(5)
    finally:
        event.remove(Engine, "after_cursor_execute", raise_sigterm)
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert not any("sqlalchemy" in f.filename for f in frames), frames
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0]
    client.set_terminated(run.info.run_id, "KILLED")
    assert client.get_run(run.info.run_id).info.status == "KILLED"
