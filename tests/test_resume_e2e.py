"""Kill anywhere, resume cleanly; same seed, same tables (issue 16, items 3 and 4).

The quick main job is started in a fresh copy of the project and SIGKILLed (its whole process
group) twice: once while ``adapt_unseen_clients`` runs, as soon as it has finished an
adaptation, and once while ``evaluate_kid`` runs, as soon as it has drawn a sample set. Each
time the same command is started again; the third run completes. The resumed runs redo only
the unfinished work (finished adaptations and sample sets are found by content in their
caches), and the final tables equal those of the session's uninterrupted quick main job
(``quick_main_job``, a separate process): partition, loss history, adaptation choices and
table, KID table.

Run with ``pytest -s`` to see how long each part took.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import MAIN_JOB_TIMEOUT_S, start_kedro

pytestmark = pytest.mark.slow

ADAPT_CACHE = "data/06_models/adaptation_cache/adapt"
SAMPLE_CACHE = "data/04_feature/kid_cache/samples"
#: wall-clock columns: what a computation took, not what it computed
TIMES = ("seconds", "seconds_median")


def cache_entries(project: Path, relative: str) -> int:
    folder = project / relative
    return sum(1 for p in folder.glob("*") if not p.name.startswith(".")) if folder.is_dir() else 0


def run_until(project: Path, log: Path, node: str, cache: str | None) -> tuple[int, float]:
    """Start the quick main job; SIGKILL its process group once ``node`` runs and has added an
    entry to ``cache`` (from then on it runs in slices of 20 ms between SIGSTOPs, so that the
    kill comes after its first new entry, not after its last); without ``cache``, let it
    finish. Its exit code and seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = start_kedro(project, "run", "--env", "quick", stdout=out)
        try:
            deadline = time.monotonic() + MAIN_JOB_TIMEOUT_S
            before = None
            while proc.poll() is None and cache is not None:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                if before is None:
                    text = " ".join(log.read_text().split())
                    if re.search(rf"Running node: \S*{node}", text):
                        before = cache_entries(project, cache)
                    time.sleep(0.05)
                    continue
                os.killpg(proc.pid, signal.SIGSTOP)
                if cache_entries(project, cache) > before:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                os.killpg(proc.pid, signal.SIGCONT)
                time.sleep(0.02)
            returncode = proc.wait(timeout=MAIN_JOB_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return returncode, time.perf_counter() - start


@pytest.fixture(scope="module")
def resumed(make_project_copy) -> Path:
    """A project copy whose quick main job was killed during adaptation, then during KID
    evaluation, and then completed (each time with the same command)."""
    project = make_project_copy("resumed")
    logs = project / "tmp"
    code, s1 = run_until(project, logs / "run1.log", "adapt_unseen_clients", ADAPT_CACHE)
    assert code == -signal.SIGKILL, (logs / "run1.log").read_text()[-4000:]
    code, s2 = run_until(project, logs / "run2.log", "evaluate_kid", SAMPLE_CACHE)
    assert code == -signal.SIGKILL, (logs / "run2.log").read_text()[-4000:]
    code, s3 = run_until(project, logs / "run3.log", "", None)
    assert code == 0, (logs / "run3.log").read_text()[-4000:]
    print(
        f"\n[timing] quick main job killed in adaptation after {s1:.1f} s, killed in KID after "
        f"{s2:.1f} s, completed in {s3:.1f} s"
    )
    return project


def log_of(project: Path, run: int) -> str:
    return " ".join((project / "tmp" / f"run{run}.log").read_text().split())


def newest(project: Path, relative: str) -> pd.DataFrame:
    """The newest complete version of a versioned CSV output."""
    folder = project / relative
    versions = sorted(p for p in folder.iterdir() if (p / folder.name).is_file())
    return pd.read_csv(versions[-1] / folder.name)


def oldest(project: Path, relative: str) -> pd.DataFrame:
    """The first version (the main job's: later tests may add versions to the shared copy)."""
    folder = project / relative
    versions = sorted(p for p in folder.iterdir() if (p / folder.name).is_file())
    return pd.read_csv(versions[0] / folder.name)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    keep = [c for c in a.columns if c not in TIMES]
    assert list(a.columns) == list(b.columns), name
    pd.testing.assert_frame_equal(
        a[keep].reset_index(drop=True), b[keep].reset_index(drop=True), check_exact=True, obj=name
    )


TABLES = {
    "partition": "data/08_reporting/partition_table.csv",
    "loss history": "data/07_model_output/pretraining_history.csv",
    "adaptation choices": "data/06_models/adaptation_choices.csv",
    "tuning": "data/07_model_output/tuning_table.csv",
    "adaptation": "data/07_model_output/adaptation_table.csv",
    "KID": "data/08_reporting/kid_table.csv",
    "forgetting": "data/07_model_output/forgetting_kid.csv",
    "unseen clients": "data/08_reporting/unseen_client_table.csv",
}


def test_a_killed_main_job_redoes_only_the_unfinished_work(resumed) -> None:
    run1, run2, run3 = (log_of(resumed, k) for k in (1, 2, 3))
    # killed after its first adaptation of an evaluation client, before the node completed
    assert re.search(r"Running node: \S*adapt_unseen_clients", run1)
    assert "Adaptations:" not in run1 and "evaluate_kid" not in run1
    # run 2: pretraining resumed from its last checkpoint, tuning and the finished adaptation
    # found in the caches, the others computed; killed during KID
    assert "resuming from" in run2
    tuned = re.search(r"tuning: adaptations (\d+) of (\d+) reused", run2)
    assert tuned and tuned[1] == tuned[2], run2[-3000:]
    adapted = re.search(r"Adaptations: (\d+) of (\d+) reused", run2)
    assert adapted and 1 <= int(adapted[1]) < int(adapted[2]), run2[-3000:]
    during_kid = re.split(r"Running node: \S*evaluate_kid", run2)
    assert len(during_kid) == 2 and not re.search(r"KID: \d+ rows", during_kid[1])
    # run 3: every adaptation reused; the sample sets drawn before the kill reused
    adapted = re.search(r"Adaptations: (\d+) of (\d+) reused", run3)
    assert adapted and adapted[1] == adapted[2], run3[-3000:]
    during_kid = re.split(r"Running node: \S*evaluate_kid", run3)[-1]
    samples = re.search(r"KID: \d+ rows from \d+ sample sets \((\d+) of (\d+) reused", during_kid)
    assert samples and 1 <= int(samples[1]) < int(samples[2]), during_kid[-3000:]
    assert "Pipeline execution completed successfully" in run3


def test_the_resumed_run_ends_with_the_tables_of_an_uninterrupted_run(
    resumed, quick_main_job
) -> None:
    for name, relative in TABLES.items():
        assert_same_table(newest(resumed, relative), oldest(quick_main_job.project, relative), name)


def test_no_partial_file_is_a_version(resumed) -> None:
    """A kill during a save leaves at most a hidden partial file, which no load reads."""
    for folder in (resumed / "data").rglob("*"):
        if folder.is_dir() and folder.name.startswith(".") and ".partial" in folder.name:
            continue  # a partial folder of a partitioned dataset: hidden, never a version
        if folder.is_file() and ".partial" in folder.name:
            assert folder.name.startswith("."), folder


def test_same_seed_same_tables(resumed, quick_main_job) -> None:
    """Determinism (issue 16, item 4): two runs with the same seed, in separate processes, give
    identical partition, loss, adaptation and KID tables (bit for bit; wall times aside)."""
    for name in ("partition", "loss history", "adaptation", "KID"):
        relative = TABLES[name]
        a, b = newest(resumed, relative), oldest(quick_main_job.project, relative)
        assert len(a) and len(a) == len(b), name
        assert_same_table(a, b, name)
