"""``spire-pipeline`` / ``python -m spire_pipeline``: runs the project like ``kedro run``;
``spire-pipeline personalize | generate | export ...`` runs a client-facing command
(:mod:`spire_pipeline.client_commands`)."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

from spire_pipeline import client_commands


def main(*args, **kwargs) -> None:
    argv = sys.argv[1:]
    if not args and not kwargs and argv and argv[0] in client_commands.COMMANDS:
        sys.exit(client_commands.main(argv))
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
