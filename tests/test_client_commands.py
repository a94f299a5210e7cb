"""``spire-pipeline personalize | generate | export``: options to runtime parameters, errors to
one line (the end-to-end runs are in test_personalize_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.io import DatasetError

from spire_pipeline.client_commands import PIPELINES, build_parser, one_line, runtime_params
from spire_pipeline.hooks import PARAMETER_MODELS
from spire_pipeline.spire.client_images import ImageInputError


def params(*argv: str) -> dict:
    return runtime_params(build_parser().parse_args(argv))


def test_options_become_the_pipeline_parameters(tmp_path) -> None:
    images = tmp_path / "mine"
    got = params("personalize", "--images", str(images), "--name", "me", "--steps", "5")
    assert got == {"personalize": {"images": str(images.resolve()), "name": "me", "steps": 5}}
    assert params("generate", "--client", "c", "--sampler", "ddpm") == {
        "generate": {"client": "c", "sampler": "ddpm"}
    }
    assert params("export", "--no-personal", "--out", "x") == {
        "diffusers_export": {"personal": False}
    }
    assert params("export") == {"diffusers_export": {}}
    assert set(PIPELINES.values()) <= set(PARAMETER_MODELS)  # validated before any node
    with pytest.raises(SystemExit):
        build_parser().parse_args(["personalize", "--name", "no_images"])


def test_an_error_is_one_line_from_inside_kedros_wrappers() -> None:
    cause = ImageInputError("my/notes.png: not a readable image (cannot identify image file)")
    try:
        try:
            raise cause
        except ImageInputError as exc:
            message = f"Failed while loading data from dataset ClientImagesDataset(path=my).\n{exc}"
            raise DatasetError(message) from exc
    except DatasetError as wrapped:
        outer = DatasetError(f"personal_images: {wrapped}")
        outer.__cause__ = wrapped
    assert one_line(outer) == str(cause)
    assert one_line(ValueError("first line\nsecond")) == "first line"
    assert one_line(KeyError("k")) == "'k'"


def test_the_console_script_still_points_at_main() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'spire-pipeline = "spire_pipeline.__main__:main"' in pyproject
