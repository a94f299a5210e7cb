"""Reading a file of finished work (a cache entry, a checkpoint) that may be damaged.

Such files are written atomically (temporary name, then rename), so a killed run leaves none
half-written; a file can still be truncated or overwritten by a full disk, a copy cut short or a
hand. Its reader then recomputes instead of failing: the file is set aside under
``<name>.corrupt`` (kept for inspection, never read again), one warning names it and the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def reason(exc: BaseException, limit: int = 160) -> str:
    """``"Type: first line of the message"``, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_or_set_aside(path: Path, read: Callable[[Path], T], what: str) -> T | None:
    """``read(path)`` (it should read everything it needs, not return a lazy view); ``None``
    when the file is unreadable, after setting it aside with a warning: the caller recomputes."""
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 - any damage means: recompute
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
            where = f"set aside as {aside.name}"
        except OSError:
            where = "left in place"
        log.warning("%s %s is unreadable (%s); %s, recomputing", what, path, reason(exc), where)
        return None
