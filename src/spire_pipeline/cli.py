"""The project's ``kedro`` commands: ``run`` that fails in one clear line, and ``compare``.

Kedro finds this module and lets its ``run`` replace the built-in one (``python -m
spire_pipeline`` uses it too). Before any work, the pipeline names, the env and every
parameter are checked (:mod:`spire_pipeline.run_checks`); an error then prints one line
(the culprit, its value, what is allowed) and exits non-zero. The traceback goes to
``tmp/last_error.log``; ``--verbose`` (or ``SPIRE_VERBOSE=1``) prints it instead.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from kedro.config import BadConfigException, MissingConfigException
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError
from kedro.utils import find_kedro_project
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from spire_pipeline.interrupts import Terminated
from spire_pipeline.run_checks import RunInputError, check_run
from spire_pipeline.spire.validation import ParameterError
from spire_pipeline.tracking.store import OPEN_RUNS

#: errors in what the user gave (parameters, data, configuration): the message is enough
INPUT_ERRORS = (
    ParameterError,
    RunInputError,
    DatasetError,
    MissingConfigException,
    BadConfigException,
    YAMLError,
    OmegaConfBaseException,
)
ERROR_LOG = Path("tmp") / "last_error.log"
EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 1, 130, 143


def verbose_requested(flag: bool) -> bool:
    """``--verbose``, or ``SPIRE_VERBOSE`` set to anything but ``0``/empty."""
    return flag or os.environ.get("SPIRE_VERBOSE", "0") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """``"Type: message"`` on one line."""
    message = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {message}"


def write_error_log(project_path: Path) -> Path | None:
    """Save the current exception's traceback under the project; its path, or ``None``."""
    path = project_path / ERROR_LOG
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        path.write_text(f"{stamp} {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    except OSError:
        return None
    return path


def _project_path(ctx: click.Context) -> Path:
    metadata = ctx.obj
    if metadata is not None and getattr(metadata, "project_path", None):
        return Path(metadata.project_path)
    return find_kedro_project(Path.cwd()) or Path.cwd()


def _run(verbose: bool, **kwargs: Any) -> Any:
    ctx = click.get_current_context()
    project = _project_path(ctx)
    pipelines = [kwargs["pipeline"]] if kwargs.get("pipeline") else list(kwargs["pipelines"])
    try:
        check_run(
            project,
            pipelines=pipelines or ["__default__"],
            env=kwargs.get("env"),
            runtime_params=kwargs.get("params"),
            conf_source=kwargs.get("conf_source"),
        )
        return ctx.invoke(kedro_run.callback, **kwargs)
    except click.ClickException:
        raise
    except KeyboardInterrupt as exc:
        closed = OPEN_RUNS.close_all("KILLED")
        what = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        runs = f"; MLflow run(s) {', '.join(closed)} marked KILLED" if closed else ""
        click.secho(f"Interrupted ({what}){runs}", err=True, fg="red")
        ctx.exit(EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT)
    except Exception as exc:
        if verbose_requested(verbose):
            raise
        log = write_error_log(project)
        line = one_line(exc)
        if not isinstance(exc, INPUT_ERRORS) and log is not None:
            line += f" (traceback in {ERROR_LOG}; --verbose prints it)"
        click.secho(f"Error: {line}", err=True, fg="red")
        ctx.exit(EXIT_ERROR)


run = click.Command(
    name="run",
    callback=_run,
    params=[
        *kedro_run.params,
        click.Option(
            ["--verbose"],
            is_flag=True,
            help="Print the full traceback of an error (also: SPIRE_VERBOSE=1).",
        ),
    ],
    help=kedro_run.help,
    short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings,
)


@click.command(name="compare")
@click.option("--run-id", default=None, help="A parent run's id (default: the latest run).")
@click.option("--tracking-uri", default=None, help="MLflow store (default: the project's).")
def compare(run_id: str | None, tracking_uri: str | None) -> None:
    """Print the methods of the latest MLflow run side by side."""
    from spire_pipeline.compare import main

    ctx = click.get_current_context()
    args = ["--run-id", run_id] if run_id else []
    args += ["--tracking-uri", tracking_uri] if tracking_uri else []
    ctx.exit(main([*args, "--project", str(_project_path(ctx))]))


@click.group(name="spire_pipeline")
def cli() -> None:
    """spire-pipeline's project commands."""


cli.add_command(run)
cli.add_command(compare)
