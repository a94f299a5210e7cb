"""Interrupts (Ctrl-C, SIGTERM) that never land inside an MLflow database write.

Python raises a signal's exception at whatever line the main thread is running. Raised
inside SQLAlchemy's execution of a write to the SQLite store, it can leave that connection
holding the database's write lock, so closing the runs afterwards fails with "database is
locked". While the run is tracked, both signals are caught here: an interrupt that arrives
inside database code is put off for a moment (the signal is sent to the main thread again)
and lands right after.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

#: modules an interrupt must not land in
DATABASE_MODULES = ("sqlalchemy.", "sqlite3")
#: seconds after which a put-off signal is raised again
RETRY_S = 0.05


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in the main thread, like Ctrl-C's interrupt)."""


def in_database_code(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a frame that called it runs in :data:`DATABASE_MODULES`."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(DATABASE_MODULES):
            return True
        frame = frame.f_back
    return False


def _send_again(signum: int) -> None:
    main = threading.main_thread()
    if main.is_alive() and main.ident is not None:
        signal.pthread_kill(main.ident, signum)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if in_database_code(frame):
        retry = threading.Timer(RETRY_S, _send_again, (signum,))
        retry.daemon = True  # never keeps an ending process alive
        retry.start()
        return
    if signum == signal.SIGTERM:
        raise Terminated(f"signal {signal.Signals(signum).name}")
    raise KeyboardInterrupt


class Interrupts:
    """Install :func:`_interrupt` for SIGINT and SIGTERM; :meth:`release` restores the old ones.

    Signal handlers can only be set from the main thread; elsewhere both calls do nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def catch(self) -> None:
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {s: signal.signal(s, _interrupt) for s in self.SIGNALS}

    def release(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                if handler is not None:  # None: set outside Python, cannot be restored
                    signal.signal(signum, handler)
        self._previous = {}
