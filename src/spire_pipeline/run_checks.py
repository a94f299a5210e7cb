"""Checks of a ``kedro run`` command line before any work: pipelines, env and parameters.

Each check raises one error whose message names the culprit, its value and what is allowed;
together they take well under a second (no pipeline is imported for a mistyped name).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.project import pipelines as registry
from kedro.framework.project import settings

from spire_pipeline.hooks import validate_all
from spire_pipeline.pipeline_registry import DEFAULT_PIPELINES
from spire_pipeline.spire.validation import did_you_mean

PIPELINES_DIR = Path(__file__).parent / "pipelines"
DEFAULT_PIPELINE = "__default__"


class RunInputError(ValueError):
    """A pipeline or configuration environment named on the command line does not exist."""


def pipeline_folders() -> list[str]:
    """The pipelines under ``spire_pipeline/pipelines/`` (one folder each)."""
    return sorted(
        p.name
        for p in PIPELINES_DIR.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and (p / "pipeline.py").is_file()
    )


def check_pipelines(names: Iterable[str]) -> None:
    """Every name is a registered pipeline; else one error listing them (closest first)."""
    names = list(names)
    folders = pipeline_folders()
    unknown = [n for n in names if n != DEFAULT_PIPELINE and n not in folders]
    if not unknown:
        return
    # a name that is not a folder may still be registered by register_pipelines()
    registry.set_requested(names)
    try:
        registered = set(registry.keys())
    except (ImportError, KeyError):  # kedro's selective loading: no such pipeline module
        registered = set()
    finally:
        registry.set_requested(None)
    unknown = [n for n in unknown if n not in registered]
    if unknown:
        valid = [DEFAULT_PIPELINE, *sorted(set(folders) | registered - {DEFAULT_PIPELINE})]
        name = unknown[0]
        raise RunInputError(
            f"unknown pipeline {name!r}{did_you_mean(name, valid)} (pipelines: {', '.join(valid)})"
        )


def conf_folder(project_path: Path, conf_source: str | None) -> Path:
    """The configuration folder a run reads (``--conf-source`` or ``settings.CONF_SOURCE``)."""
    folder = Path(conf_source) if conf_source else Path(settings.CONF_SOURCE)
    return folder if folder.is_absolute() else project_path / folder


def check_env(env: str | None, conf: Path) -> None:
    """``env`` is a folder of ``conf``; else one error listing the environments."""
    if env is None or not conf.is_dir():  # the default env, or a packaged (archived) conf
        return
    envs = sorted(p.name for p in conf.iterdir() if p.is_dir() and not p.name.startswith("."))
    if env not in envs:
        raise RunInputError(
            f"unknown env {env!r}{did_you_mean(env, envs)} "
            f"(environments, the folders of {conf.name}/: {', '.join(envs)})"
        )


def load_parameters(conf: Path, env: str | None, runtime_params: Mapping[str, Any] | None):
    """The run's parameters: the parameters files of ``env`` over base, then ``--params``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader's deprecation notes: the run shows them
        loader = settings.CONFIG_LOADER_CLASS(
            conf_source=str(conf),
            env=env,
            runtime_params=dict(runtime_params or {}),
            **settings.CONFIG_LOADER_ARGS,
        )
        try:
            return dict(loader["parameters"])
        except MissingConfigException:
            return dict(runtime_params or {})


def check_run(
    project_path: Path,
    *,
    pipelines: Iterable[str],
    env: str | None,
    runtime_params: Mapping[str, Any] | None,
    conf_source: str | None = None,
) -> None:
    """All the checks, cheapest first: environment, pipeline names, parameters."""
    conf = conf_folder(project_path, conf_source)
    check_env(env, conf)
    check_pipelines(pipelines)
    if conf.is_dir():
        validate_all(load_parameters(conf, env, runtime_params), run_stages(pipelines))


def run_stages(pipelines: Iterable[str]) -> set[str]:
    """The project pipelines a run of ``pipelines`` includes (``__default__``: the main job)."""
    stages: set[str] = set()
    for name in pipelines:
        stages |= set(DEFAULT_PIPELINES) if name == DEFAULT_PIPELINE else {name}
    return stages
