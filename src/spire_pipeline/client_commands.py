"""``spire-pipeline personalize | generate | export``: the client-facing commands.

Each command runs its Kedro pipeline (``personalize``, ``generate``, ``diffusers_export``) in a
``KedroSession`` with the options as runtime parameters, exactly as
``kedro run --pipeline <name> --params <section>.<key>=<value>`` would, so that the command
line and the pipelines share one code path (and the run is tracked in MLflow). On success it
lists the files it wrote; on bad input it prints one line naming the culprit and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: command -> the pipeline it runs (whose parameters are the section of the same name)
PIPELINES = {"personalize": "personalize", "generate": "generate", "export": "diffusers_export"}
COMMANDS = tuple(PIPELINES)
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spire-pipeline",
        description="Personalise SPIRE to your own images, sample any client, export to "
        "diffusers. Without a command, `spire-pipeline` runs like `kedro run`.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", help="Kedro configuration environment (e.g. quick)")
    common.add_argument(
        "--project", type=Path, default=Path.cwd(), help="project folder (default: here)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "personalize",
        parents=[common],
        help="train a new client embedding on your images (backbone frozen)",
        description="Train only a new embedding for NAME on the images in DIR_OR_NPZ, on the "
        "newest pretrained spire backbone; write it as a small safetensors file.",
    )
    p.add_argument("--images", required=True, help="a folder of PNG/JPEG files, or an .npz")
    p.add_argument("--name", required=True, help="the new client's name")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="training steps (default: the method's choice)")
    p.add_argument("--lr", type=float, help="embedding learning rate (default: likewise)")
    p.add_argument("--validation-share", type=float, dest="validation_share")
    p.add_argument("--device", help="auto (default: a GPU when there is one), cpu or cuda")

    g = sub.add_parser(
        "generate",
        parents=[common],
        help="samples of a seen, adapted or personalised client: PNGs and a grid",
    )
    g.add_argument("--client", required=True)
    g.add_argument("--method", help="pretraining or adaptation method (default: spire)")
    g.add_argument("--num", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--sampler", choices=["ddpm", "ddim", "dpmsolver++"])
    g.add_argument("--steps", type=int, help="sampler steps")
    g.add_argument(
        "--guidance", type=float, help="personalisation guidance scale (1: none; default 1)"
    )
    g.add_argument("--device", help="auto (default: a GPU when there is one), cpu or cuda")

    e = sub.add_parser(
        "export",
        parents=[common],
        help="the pretrained spire model and client embeddings in diffusers' format",
    )
    e.add_argument("--out", type=Path, help="also copy the export to this new folder")
    e.add_argument(
        "--no-personal",
        dest="personal",
        action="store_false",
        default=None,
        help="leave out the personalised embeddings",
    )
    return parser


#: options that are not parameters of the pipeline
_NOT_PARAMS = {"command", "env", "project", "out"}


def runtime_params(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options as runtime parameters (``{section: {key: value}}``)."""
    section = PIPELINES[args.command]
    given = {k: v for k, v in vars(args).items() if k not in _NOT_PARAMS and v is not None}
    if "images" in given:
        given["images"] = str(Path(given["images"]).expanduser().resolve())
    return {section: given}


def run_pipeline(project: Path, env: str | None, pipeline: str, params: dict[str, Any]) -> str:
    """Run ``pipeline`` of the project with ``params``; return the session id (= the save
    version of every versioned output)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline])
        return session.session_id


def written_files(project: Path, version: str) -> list[Path]:
    """Files under ``data/`` saved with ``version`` (they sit in a folder of that name)."""
    out = []
    for root, dirs, _ in os.walk(project / "data"):
        if Path(root).name == version:
            out += [Path(r, f) for r, _, fs in os.walk(root) for f in fs]
            dirs.clear()
    return sorted(out)


#: Kedro's wrappers of a dataset's own error (``<name>: Failed while ...``; the wrapped error
#: says what went wrong)
_WRAPPERS = ("Failed while loading data from dataset", "Failed while saving data to dataset")


def one_line(exc: BaseException) -> str:
    """An exception as one line: the first message in its chain that is not one of Kedro's
    wrappers, first line only."""
    seen = set()
    while id(exc) not in seen and any(w in str(exc).split("\n")[0] for w in _WRAPPERS):
        seen.add(id(exc))
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None:
            break
        exc = nxt
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command's pipeline, report what it wrote."""
    args = build_parser().parse_args(argv)
    project = args.project.resolve()
    pipeline = PIPELINES[args.command]
    try:
        version = run_pipeline(project, args.env, pipeline, runtime_params(args))
    except Exception as exc:  # one line, not a page of traceback
        print(f"spire-pipeline {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    files = written_files(project, version)
    if args.command == "export" and args.out is not None:
        folder = next(f.parent for f in files if f.name == "spire_export.json")
        shutil.copytree(folder, args.out)
        print(f"Copied the export to {args.out}")
    print(f"spire-pipeline {args.command}: wrote {len(files)} files (version {version}):")
    for f in files[:20]:
        print(f"  {f.relative_to(project)}")
    if len(files) > 20:
        print(f"  ... and {len(files) - 20} more in the same folders")
    return 0
