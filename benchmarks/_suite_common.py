"""Shared pieces of ``benchmarks/suite.py``: the row format, timing, parameters, data, memory."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "benchmark",
    "value",
    "unit",
    "reference",
    "reference_value",
    "ratio",
    "target",
    "meets",
)
#: allocations of at least this many bytes go to mmap (and back to the OS when freed), so that
#: the resident set size follows the live tensors (see ``run_worker``)
MMAP_THRESHOLD = 65536


@dataclass
class Row:
    """One line of the benchmark table. ``value`` is a number, or ``"n/a"`` with the reason in
    ``reference`` when there is nothing to measure (e.g. no main-job run recorded yet)."""

    benchmark: str
    value: float | str
    unit: str
    reference: str = ""
    reference_value: float | None = None
    ratio: float | None = None
    target: str = ""
    meets: bool | str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else math.nan


def row_vs(
    name: str,
    value: float,
    unit: str,
    reference: str,
    reference_value: float,
    target: str = "",
    ok: Callable[[float], bool] | None = None,
) -> Row:
    """A row comparing ``value`` with ``reference_value``; ``ok(ratio)`` decides ``meets``."""
    r = ratio(value, reference_value)
    meets = None if ok is None else bool(ok(r))
    return Row(name, value, unit, reference, reference_value, r, target, meets)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each ``fn``, called in turn (A, B, A, B ...) after one warm-up each,
    so that a change in the machine's load affects every candidate alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int, repeats: int) -> float:
    """This machine's dense matrix-product speed (GFLOP/s) for ``n`` x ``n`` matrices."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inner = 10 if device.type == "cuda" else 1

    def run() -> None:
        for _ in range(inner):
            a @ b
        sync()

    seconds = median_time(run, repeats, warmup=2) / inner
    return 2 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------- parameters, data


def load_parameters(env: str) -> dict[str, Any]:
    """The env's parameters merged over ``conf/base``, as ``kedro run --env`` loads them."""
    from kedro.config import OmegaConfigLoader

    conf = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env)
    return conf["parameters"]


def load_client_splits(params: dict[str, Any], env: str) -> dict:
    """Fashion-MNIST partitioned with the env's ``data_partitioning`` node (as the main job)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from spire_pipeline.pipelines.data_partitioning.nodes import partition_clients
    from spire_pipeline.spire.partition import splits_from_partitions

    conf = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env)
    catalog_conf = conf["catalog"]
    for entry in catalog_conf.values():  # catalog paths are relative to the project root
        for key in ("images_filepath", "labels_filepath", "filepath"):
            if key in entry and not Path(entry[key]).is_absolute():
                entry[key] = str(ROOT / entry[key])
    catalog = DataCatalog.from_config(
        {k: v for k, v in catalog_conf.items() if k in ("raw_train", "raw_test")}
    )
    splits, _ = partition_clients(
        catalog.load("raw_train"), catalog.load("raw_test"), params["data_partitioning"]
    )
    return splits_from_partitions(splits)


# ----------------------------------------------------------------------------- memory


def _status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def rss_mib() -> float:
    """Resident set size of this process (MiB)."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> float:
    """Reset this process's peak RSS to the current RSS (Linux ``clear_refs``); returns it."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib()


def peak_rss_mib() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (MiB)."""
    return _status_mib("VmHWM")


def memory_supported() -> bool:
    try:
        reset_peak_rss()
        return True
    except OSError:
        return False


def run_worker(jobs: list[dict], threads: int, timeout: float = 900) -> list[dict]:
    """Run memory jobs in a fresh process (``_suite_memory.py``); returns one dict per job.

    The worker allocates large blocks with mmap (``MALLOC_MMAP_THRESHOLD_``), so that freed
    tensors leave the resident set and its peak measures what a job needed.
    """
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_suite_memory.py")), str(threads)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def random_images(n: int, size: int, channels: int, seed: int) -> torch.Tensor:
    """``n`` images in model space [-1, 1] (for costs that do not depend on the pixels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def fmt(v: Any) -> str:
    """A number for the printed table (3 significant digits, no exponent for usual sizes);
    an empty cell for a missing one."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return "" if v is None else str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return "" if np.isnan(v) else str(v)
    a = abs(float(v))
    if a == 0 or 1e-3 <= a < 1e7:
        digits = max(0, 2 - int(math.floor(math.log10(a)))) if a else 0
        return f"{float(v):,.{digits}f}"
    return f"{float(v):.3g}"
