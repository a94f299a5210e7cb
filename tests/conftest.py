"""Shared fixtures: real Fashion-MNIST arrays, temporary project copies, a ``kedro`` runner.

End-to-end tests never touch the working tree: they run ``kedro`` in a copy of the project
made by :func:`make_project_copy` (``conf/``, ``pyproject.toml``, the ``data/`` skeleton and a
link to the raw Fashion-MNIST files), with MLflow, Flower and Ray state inside that copy::

    def test_something(make_project_copy, run_kedro):
        project = make_project_copy()
        result = run_kedro(project, "--pipeline", "data_partitioning", "--env", "quick")
        assert "Pipeline execution completed" in result.output

``run_kedro(project, *args)`` is ``kedro run *args``; ``kedro_cli(project, *args)`` runs any
other ``kedro`` command (``kedro_cli(project, "registry", "list")``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import spire_pipeline
from spire_pipeline.data_setup import DEBIAN_DIR, FASHION_MNIST_FILES
from spire_pipeline.spire.idx import read_idx

REPO = Path(__file__).resolve().parents[1]
RAW_DIR = REPO / "data" / "01_raw" / "fashion-mnist"
#: environment of every ``kedro`` subprocess (besides FLWR_HOME / RAY_TMPDIR, set per project)
KEDRO_ENV_VARS = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MPLBACKEND": "Agg",
    "NO_COLOR": "1",
    "COLUMNS": "200",  # rich wraps log lines at the terminal width
    "PYTHONUNBUFFERED": "1",
}
#: inherited variables that would point a subprocess at someone else's state
_DROPPED_ENV_VARS = ("KEDRO_ENV", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID")
_TAIL_CHARS = 6000
_KILL_GRACE_S = 10.0


# ----------------------------------------------------------------------------- two workers

#: The suite runs in two pytest-xdist workers (``-n 2``, pyproject.toml), one per core, each
#: with one torch thread (two threads per worker would oversubscribe the cores). A module is
#: one work unit, so its fixtures run once; modules that share a session fixture (the quick
#: main job) or a kind of process (Flower) form one unit, and the longest units start first.
SHARED_UNITS = {
    "test_main_job_e2e": "main_job",
    "test_notebook": "main_job",
    "test_resume_e2e": "main_job",
    "test_flower_e2e": "flower",
    "test_flower_faults": "flower",
}
LONGEST_FIRST = ["main_job", "flower"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # kedro subprocesses inherit them
        os.environ[_var] = "1"


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module's shared unit, else its module."""
    stem = Path(nodeid.split("::", 1)[0]).stem
    return SHARED_UNITS.get(stem, stem)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Schedule whole work units (:func:`work_unit`) in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest work units first (stable: the modules' own order otherwise)."""

    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.nodeid)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker() -> None:
    """One torch thread in each xdist worker (see :data:`SHARED_UNITS`)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# ----------------------------------------------------------------------------- raw data


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_MNIST_FILES)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder with the four Fashion-MNIST IDX files (``make data`` puts them in place).

    Falls back to Debian's ``dataset-fashion-mnist`` folder, then to running
    ``python -m spire_pipeline.data_setup`` into a temporary folder.
    """
    for folder in (RAW_DIR, DEBIAN_DIR):
        if _complete(folder):
            return folder
    dest = tmp_path_factory.mktemp("fashion-mnist")
    proc = subprocess.run(
        [sys.executable, "-m", "spire_pipeline.data_setup", "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0 or not _complete(dest):
        pytest.fail(f"could not obtain Fashion-MNIST:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return dest


@dataclass(frozen=True)
class FashionMNIST:
    """The real data set, read once per test session with ``read_idx``."""

    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) uint8

    def train_slice(self, n: int, start: int = 0) -> dict[str, np.ndarray]:
        """``{"images", "labels"}`` of ``n`` training images (a raw dataset's load format)."""
        sl = slice(start, start + n)
        return {"images": self.train_images[sl], "labels": self.train_labels[sl].astype(np.int64)}

    def test_slice(self, n: int, start: int = 0) -> dict[str, np.ndarray]:
        sl = slice(start, start + n)
        return {"images": self.test_images[sl], "labels": self.test_labels[sl].astype(np.int64)}


@pytest.fixture(scope="session")
def fashion_mnist(fashion_mnist_dir: Path) -> FashionMNIST:
    """Real Fashion-MNIST arrays (slice them: ``fashion_mnist.train_slice(2000)``)."""
    return FashionMNIST(
        train_images=read_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz"),
        train_labels=read_idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz"),
        test_images=read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"),
        test_labels=read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz"),
    )


# ----------------------------------------------------------------------------- project copies


def _package_is_editable_install() -> bool:
    """Whether ``import spire_pipeline`` resolves to this working tree's ``src/``."""
    return Path(spire_pipeline.__file__).resolve().is_relative_to(REPO / "src")


def copy_project(dest: Path, raw_dir: Path) -> Path:
    """Copy the project into ``dest`` (a new folder) for ``kedro`` subprocess runs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    # conf/local holds personal settings and credentials: the copy gets an empty one.
    shutil.copytree(REPO / "conf", dest / "conf", ignore=_ignore_local_conf)
    (dest / "conf" / "local").mkdir(exist_ok=True)
    # Kedro requires <project>/src to exist; the package itself comes from the editable
    # install (same files), or from a copy when the package is installed elsewhere.
    if _package_is_editable_install():
        (dest / "src").mkdir()
    else:
        shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for keep in (REPO / "data").rglob(".gitkeep"):
        folder = dest / keep.parent.relative_to(REPO)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(keep, folder / ".gitkeep")
    raw = dest / "data" / "01_raw" / "fashion-mnist"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.symlink_to(raw_dir.resolve(), target_is_directory=True)
    (dest / "tmp").mkdir()
    return dest


def _ignore_local_conf(folder: str, names: list[str]) -> list[str]:
    if Path(folder).name == "local" and Path(folder).parent.name == "conf":
        return [n for n in names if n != ".gitkeep"]
    return []


@pytest.fixture(scope="session")
def make_project_copy(
    tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path
) -> Callable[..., Path]:
    """Factory: ``make_project_copy(name="project")`` returns a fresh copy of the project."""

    def make(name: str = "project") -> Path:
        return copy_project(tmp_path_factory.mktemp(name) / "spire-pipeline", fashion_mnist_dir)

    return make


@pytest.fixture(scope="session")
def project_copy(make_project_copy: Callable[..., Path]) -> Path:
    """One project copy shared by the whole session (for runs that do not get in each other's
    way; use ``make_project_copy()`` for a private one)."""
    return make_project_copy("shared_project")


# ----------------------------------------------------------------------------- the quick main job

#: limit of one quick main job (it takes 2 to 4 minutes on a loaded 2-core machine)
MAIN_JOB_TIMEOUT_S = 600


@dataclass(frozen=True)
class MainJob:
    """A project copy in which ``kedro run --env quick`` (the main job) has completed."""

    project: Path
    result: KedroResult
    seconds: float


@pytest.fixture(scope="session")
def quick_main_job(make_project_copy) -> MainJob:
    """The quick main job, run once per session in its own project copy and shared by every
    test that reads its outputs (the main-job checks, the notebook). Tests may run other
    pipelines in that copy (the sweep, another theory seed); none may run the main job again."""
    project = make_project_copy("main_job")
    start = time.perf_counter()
    result = run_kedro(project, "--env", "quick", timeout=MAIN_JOB_TIMEOUT_S)
    return MainJob(project, result, time.perf_counter() - start)


# ----------------------------------------------------------------------------- running kedro


@dataclass
class KedroResult:
    """What a ``kedro`` subprocess did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat_output(self) -> str:
        """The output with all whitespace runs collapsed (log lines wrap)."""
        return " ".join(self.output.split())

    def tail(self, chars: int = _TAIL_CHARS) -> str:
        return (
            f"--- stdout (tail) ---\n{self.stdout[-chars:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-chars:]}"
        )


class KedroRunError(AssertionError):
    """A ``kedro`` subprocess failed or timed out (the message holds its output's tail)."""

    def __init__(self, result: KedroResult, project_dir: Path) -> None:
        what = "timed out" if result.timed_out else f"exited with {result.returncode}"
        super().__init__(f"`{' '.join(result.args)}` in {project_dir} {what}\n{result.tail()}")
        self.result = result


def kedro_executable() -> list[str]:
    """The ``kedro`` next to the running interpreter (``python -m kedro`` otherwise)."""
    exe = Path(sys.executable).parent / "kedro"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "kedro"]


def start_kedro(
    project_dir: Path,
    *args: str,
    stdout,
    stderr=subprocess.STDOUT,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``kedro *args`` in ``project_dir`` in its own process group (id ``proc.pid``),
    without stdin, writing to ``stdout`` and ``stderr``; the caller waits for it or ends it."""
    project_dir = Path(project_dir)
    return subprocess.Popen(
        [*kedro_executable(), *args],
        cwd=project_dir,
        env=kedro_env(project_dir, env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def kedro_env(project_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``kedro`` subprocess in ``project_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV_VARS}
    env.update(KEDRO_ENV_VARS)
    tmp = Path(project_dir) / "tmp"
    env["FLWR_HOME"] = str(tmp / "flwr")
    env["RAY_TMPDIR"] = str(_short_path(tmp / "ray"))
    env.update(extra or {})
    return env


_RAY_LINKS: list[Path] = []


def _short_path(folder: Path) -> Path:
    """``folder``, or a short link to it: Ray's AF_UNIX socket paths must stay < 108 bytes."""
    if len(str(folder)) <= 50:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"spire-ray-{digest}"
    if not link.is_symlink():
        link.symlink_to(folder, target_is_directory=True)
        _RAY_LINKS.append(link)
    return link


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kedro_cli(
    project_dir: Path | str,
    *args: str,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> KedroResult:
    """Run ``kedro *args`` in ``project_dir`` in its own process group.

    The whole group (kedro and anything it spawned) is terminated when ``timeout`` seconds
    pass, and killed once kedro has exited (no stray workers). With ``check`` a non-zero exit
    or a timeout raises :class:`KedroRunError` with the tail of stdout and stderr.
    """
    project_dir = Path(project_dir)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = start_kedro(project_dir, *args, stdout=out, stderr=err, env=env)
        done = threading.Event()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _signal_group(proc.pid, signal.SIGTERM)
            if not done.wait(_KILL_GRACE_S):
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            # Wait without reaping: while kedro is an unreaped zombie its pid, hence the
            # group id, cannot be reused, so signalling the group is safe.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        finally:
            done.set()
            timer.cancel()
            _signal_group(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        out.seek(0)
        err.seek(0)
        result = KedroResult(
            args=["kedro", *args],
            returncode=returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=expired.is_set(),
        )
    if check and (result.returncode != 0 or result.timed_out):
        raise KedroRunError(result, project_dir)
    return result


def run_kedro(project_dir: Path | str, *args: str, **kwargs) -> KedroResult:
    """``kedro run *args`` in ``project_dir`` (keywords as :func:`kedro_cli`)."""
    return kedro_cli(project_dir, "run", *args, **kwargs)


@pytest.fixture(name="kedro_cli", scope="session")
def kedro_cli_fixture() -> Callable[..., KedroResult]:
    """:func:`kedro_cli`: ``kedro_cli(project, "registry", "list", timeout=60)``."""
    return kedro_cli


@pytest.fixture(name="run_kedro", scope="session")
def run_kedro_fixture() -> Callable[..., KedroResult]:
    """:func:`run_kedro`: ``run_kedro(project, "--pipeline", "data_partitioning", "--env",
    "quick")``; ``check=False`` returns a failed run instead of raising."""
    return run_kedro


@pytest.fixture(scope="session", autouse=True)
def _clean_ray_links() -> Iterator[None]:
    """Remove the short RAY_TMPDIR links that :func:`kedro_env` may have created."""
    yield
    for link in _RAY_LINKS:
        link.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- leftovers


def leftover_processes(root: Path | str) -> list[tuple[int, str]]:
    """Running processes that belong to the project copy ``root``: their ``FLWR_HOME`` (which
    every Flower and Ray process of a run inherits, see :func:`kedro_env`) lies inside it.

    Returns ``(pid, command line)`` pairs; zombies and this process are not counted.
    """
    prefix = f"FLWR_HOME={Path(root).resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2] in "ZX":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            if any(var.startswith(prefix) for var in environ):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), cmd.strip()))
        except OSError:
            continue
    return found


@pytest.fixture(name="leftover_processes", scope="session")
def leftover_processes_fixture() -> Callable[[Path | str], list[tuple[int, str]]]:
    """:func:`leftover_processes`, waiting up to 30 s for processes that are shutting down."""

    def check(root: Path | str) -> list[tuple[int, str]]:
        deadline = time.monotonic() + 30
        while (found := leftover_processes(root)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return found

    return check


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite, no process started for a test's project copy may still run (the
    Flower engine's SuperLink, SuperNodes, ServerApp, ClientApps, Ray); any found are stopped
    by their process group and reported as an error."""
    yield
    if not Path("/proc").is_dir():
        return
    root = tmp_path_factory.getbasetemp()
    deadline = time.monotonic() + 30
    while (found := leftover_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in found:
        try:
            _signal_group(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not found, f"processes outlived the test suite: {found}"


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a test module (fast on a shared 2-core machine, bitwise reproducible).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
