"""The processes the ``flower`` engine starts, each in its own process group, stopped by group.

Flower's own processes start helpers of their own (``flower-superexec`` in a new session, then
``flwr-serverapp``, ``flwr-clientapp`` or ``flwr-simulation`` and Ray's processes), so stopping
collects every descendant of what was started, and signals each process group found there,
never a group that none of them leads. If the process that started them dies without stopping
them (``kill -9``), they are stopped all the same: a started process gets SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``, Linux), and a watchdog process stops every group it saw
below them (:func:`watch`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
try:  # resolved here, so that the child only makes one libc call between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Started:
    """A process the engine started (its process group id is its pid)."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def process_table() -> dict[int, tuple[int, int, str]]:
    """``pid -> (parent pid, process group, state)`` of every process (Linux ``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[int, int, str]]) -> set[int]:
    """Every process below ``roots`` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def groups_of(roots: Iterable[int]) -> set[int]:
    """The running process groups led by a root or by one of its descendants."""
    roots = set(roots)
    if sys.platform != "linux":
        return alive_groups(roots)
    table = process_table()
    pids = (roots & set(table)) | descendants(roots, table)
    return {table[p][1] for p in pids if table[p][1] in pids | roots and table[p][2] not in "ZX"}


def alive_groups(groups: set[int]) -> set[int]:
    """Those of ``groups`` that still have a running (not zombie) process."""
    if sys.platform != "linux":
        alive = set()
        for group in groups:
            try:
                os.killpg(group, 0)
                alive.add(group)
            except (ProcessLookupError, PermissionError):
                pass
        return alive
    return {g for _, g, state in process_table().values() if g in groups and state not in "ZX"}


def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM ``groups``; SIGKILL those still running after ``grace`` seconds."""
    _signal(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive_groups(groups):
        time.sleep(0.1)
    left = alive_groups(groups)
    if left:
        log.warning("process groups %s did not stop on SIGTERM; killing them", sorted(left))
        _signal(left, signal.SIGKILL)


def _signal(groups: set[int], sig: int) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessGroups:
    """Start commands in new process groups; stop them, and whatever they started, by group.

    The groups of what the started processes start are looked up again and again
    (:meth:`observe`), since a process whose parent died is no longer found below it. A
    watchdog process stops them all if the process that started them dies without doing so
    (``python -m spire_pipeline.flower.processes``).
    """

    def __init__(self, registry: Path) -> None:
        self.started: list[Started] = []
        self.registry = registry
        self._seen: dict[int, set[int]] = {}  # root pid -> process groups seen below it
        self._watchdog: subprocess.Popen | None = None

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        env: dict[str, str],
        cwd: Path | None = None,
    ) -> Started:
        self._start_watchdog(env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group, with id proc.pid
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (one libc call, resolved above)
            )
        started = Started(name, proc, log_path)
        self.started.append(started)
        self._seen[proc.pid] = {proc.pid}
        with self.registry.open("a") as f:
            f.write(f"{proc.pid}\n")
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return started

    def observe(self) -> None:
        """Remember the running process groups below each started process."""
        for root in self._seen:
            self._seen[root] = alive_groups(self._seen[root]) | groups_of([root])

    def stop(self, which: Sequence[Started] | None = None, grace: float = 10.0) -> None:
        """Stop ``which`` (default: all) with everything below them, by process group; reap."""
        everything = which is None
        which = list(self.started if which is None else which)
        self.observe()
        groups = set().union(*(self._seen.pop(s.proc.pid, set()) for s in which))
        if groups:
            stop_groups(groups, grace)
        for s in which:
            try:
                s.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not exit", s.name, s.proc.pid)
            self.started.remove(s)
        if everything:
            self._stop_watchdog()

    def _start_watchdog(self, env: dict[str, str]) -> None:
        if self._watchdog is not None:
            return
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        self.registry.write_text("")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), str(self.registry)],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # not stopped with the group of the process it watches
        )

    def _stop_watchdog(self) -> None:
        self.registry.unlink(missing_ok=True)  # the watchdog's signal to end
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None


def watch(parent: int, registry: Path, poll: float = 1.0) -> None:
    """While ``parent`` lives, remember the process groups of the processes listed in
    ``registry`` and of everything below them; when it dies, stop those groups. Ends when
    ``registry`` is removed (the parent stopped everything itself)."""
    seen: set[int] = set()
    while registry.exists():
        try:
            roots = {int(line) for line in registry.read_text().split()}
        except (OSError, ValueError):
            roots = set()
        seen = alive_groups(seen) | groups_of(roots)
        if os.getppid() != parent:  # the parent died: this process was handed to another
            stop_groups(seen, grace=5.0)
            registry.unlink(missing_ok=True)
            return
        time.sleep(poll)


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
