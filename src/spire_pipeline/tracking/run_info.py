"""What names and tags a ``kedro run``'s MLflow run: pipeline, env, seed, data, commit, command."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: tag names (the parent run and every method's child run carry them)
TAG_PID = "spire.pid"
TAG_HOST = "spire.host"


def used_sections(inputs: Iterable[str], sections: Iterable[str]) -> list[str]:
    """The parameter ``sections`` (in their order) that a pipeline with ``inputs`` reads."""
    names = set(inputs)
    if "parameters" in names:
        return list(sections)
    read = {n.removeprefix("params:").split(".")[0] for n in names if n.startswith("params:")}
    return [s for s in sections if s in read]


def run_seed(parameters: Mapping[str, Any], sections: Iterable[str]) -> Any:
    """The seed of the first of ``sections`` that has one (the run's name shows it)."""
    for section in sections:
        value = parameters.get(section)
        if isinstance(value, Mapping) and "seed" in value:
            return value["seed"]
    return None


def run_name(pipelines: Iterable[str] | None, env: str | None, seed: Any) -> str:
    """``"__default__ · quick · seed 0"``."""
    parts = ["+".join(pipelines or ["__default__"]), env or "base"]
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(parts)


def git_commit(folder: Path) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``folder``; ``("unknown", None)``."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as typed (``kedro run --env quick ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "unknown"
    first = Path(argv[0])
    if first.name == "__main__.py":  # python -m <package>
        return shlex.join(["python", "-m", first.parent.name, *argv[1:]])
    return shlex.join([first.name or argv[0], *argv[1:]])


def dataset_source(description: Mapping[str, Any]) -> tuple[str, str]:
    """``(name, path)`` of a raw dataset from its ``_describe()`` (a file path key in it)."""
    paths = [
        str(v)
        for k, v in description.items()
        if v and isinstance(v, str | os.PathLike) and ("filepath" in k or k in ("path",))
    ]
    if not paths:
        return "unknown", "unknown"
    path = Path(paths[0])
    return (path.parent.name or path.stem), " ".join(paths)


def partition_scheme(parameters: Mapping[str, Any]) -> str | None:
    """``"shards (2 classes per client), 4 seen + 2 unseen clients"``, from data_partitioning."""
    p = parameters.get("data_partitioning")
    if not isinstance(p, Mapping):
        return None
    scheme = str(p.get("scheme", "?"))
    if scheme == "shards" and "classes_per_client" in p:
        scheme += f" ({p['classes_per_client']} classes per client)"
    elif scheme == "dirichlet" and "alpha" in p:
        scheme += f" (alpha {p['alpha']})"
    roles = [
        f"{p[k]} {label}"
        for k, label in (
            ("num_seen_clients", "seen"),
            ("num_tuning_clients", "tuning"),
            ("num_unseen_clients", "unseen"),
        )
        if k in p
    ]
    return scheme + (f", {' + '.join(roles)} clients" if roles else "")


def run_tags(
    *,
    pipelines: Iterable[str] | None,
    env: str | None,
    seed: Any,
    parameters: Mapping[str, Any],
    dataset: Mapping[str, Any] | None,
    project_path: Path,
    argv: list[str] | None = None,
) -> dict[str, str]:
    """The tags of a run's parent MLflow run (children carry the descriptive ones too)."""
    commit, dirty = git_commit(project_path)
    name, path = dataset_source(dataset or {})
    tags = {
        "pipeline": "+".join(pipelines or ["__default__"]),
        "env": env or "base",
        "seed": str(seed),
        "dataset": name,
        "dataset_path": path,
        "partition_scheme": partition_scheme(parameters) or "n/a",
        "git_commit": commit,
        "command": command_line(argv),
        "kedro_command": command_line(argv),
        TAG_PID: str(os.getpid()),
        TAG_HOST: socket.gethostname(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
        tags["git_dirty"] = str(dirty).lower()
    return tags


#: tags a method's child run copies from its parent (filters in the UI work on children too)
CHILD_TAGS = ("pipeline", "env", "seed", "dataset", "partition_scheme", "git_commit")
