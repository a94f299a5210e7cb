"""End to end (issue 17): ``spire-pipeline personalize | generate | export`` in a copy of the
project, on a pretrained model of the quick configuration (random weights: these tests check
the mechanics, which hold on any model), and the README's diffusers snippet in a clean
interpreter that cannot import this project.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import kedro_env
from PIL import Image

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig
from spire_pipeline.spire.model import build_backbone, embedding_dim, state_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VERSION = "2026-01-01T00.00.00.000Z"
#: one thread in every subprocess: fast on a shared machine, and the same arithmetic in each
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ERROR_PREFIX = "spire-pipeline personalize: error: "


def spire_cli(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m spire_pipeline *args`` (the ``spire-pipeline`` console script) in ``project``."""
    return subprocess.run(
        [sys.executable, "-m", "spire_pipeline", *args],
        cwd=project,
        env=kedro_env(project, ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def quick_spire_model() -> ModelBundle:
    """A ``spire`` bundle with the quick configuration's architecture and four seen clients."""
    params = yaml.safe_load((REPO / "conf/quick/parameters_federated_pretraining.yml").read_text())
    cfg = params["federated_pretraining"]
    backbone = BackboneConfig(**cfg["backbone"])
    model = build_backbone(backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    embeddings = {f"seen_{k:02d}": torch.randn(embedding_dim(model), generator=g) for k in range(4)}
    return ModelBundle(
        "spire",
        backbone,
        DiffusionConfig(**cfg["diffusion"]),
        backbone=state_of(model),
        embeddings=embeddings,
    )


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{k:02d}.png")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(make_project_copy) -> Path:
    project = make_project_copy("personalize")
    path = project / "data/06_models/pretrained" / VERSION / "spire.safetensors"
    ModelBundleDataset(filepath=str(path)).save(quick_spire_model())
    return project


@pytest.fixture(scope="module")
def two_classes(project, fashion_mnist) -> Path:
    """50 Fashion-MNIST test images of classes 1 (trouser) and 7 (sneaker), as PNG files."""
    labels = fashion_mnist.test_labels
    idx = np.concatenate([np.flatnonzero(labels == 1)[:25], np.flatnonzero(labels == 7)[:25]])
    return write_pngs(project / "my_images", fashion_mnist.test_images[idx])


@pytest.fixture(scope="module")
def personalized(project, two_classes):
    model_file = project / "data/06_models/pretrained" / VERSION / "spire.safetensors"
    before = sha256(model_file)
    proc = spire_cli(
        project, "personalize", "--env", "quick", "--images", str(two_classes), "--name", "mine",
        "--steps", "10",
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    return proc, before, sha256(model_file)


def test_personalize_writes_a_small_embedding_and_logs_its_curve(project, personalized) -> None:
    import mlflow

    proc, before, after = personalized
    assert before == after, "the pretrained backbone file changed"
    files = list((project / "data/06_models/personal/mine").glob("*/mine.safetensors"))
    assert len(files) == 1
    size = files[0].stat().st_size
    assert size < 4096, size
    assert str(files[0].relative_to(project)) in proc.stdout
    for name in ("personal_sample_grid.png", "personal_validation_loss.png"):
        assert len(list((project / "data/08_reporting" / name).glob(f"*/{name}"))) == 1

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.run_name LIKE 'personalize · quick%'"
    )
    assert [r.info.status for r in runs] == ["FINISHED"]
    run = runs[0]
    assert run.data.metrics["personalize.embedding_bytes"] == size
    assert run.data.metrics["personalize.trained_params"] == 32  # 4 x the first width (8)
    curve = client.get_metric_history(run.info.run_id, "personalize.val_loss")
    assert sorted(m.step for m in curve) == list(range(11))  # before training, then every step
    train = client.get_metric_history(run.info.run_id, "personalize.train_loss")
    assert len(train) == 10
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "personalize")}
    assert "personalize/personal_sample_grid.png" in artifacts


@pytest.fixture(scope="module")
def generated(project, personalized):
    """Two ``generate`` runs with the same seed: their output folders."""
    runs = []
    for _ in range(2):
        proc = spire_cli(
            project, "generate", "--env", "quick", "--client", "mine", "--num", "6", "--seed", "4"
        )
        assert proc.returncode == 0, describe(proc)
        version = re.search(r"\(version (\S+)\)", proc.stdout).group(1)
        runs.append(version)
    assert runs[0] != runs[1]
    return [
        (
            project / "data/08_reporting/generated_grid.png" / v / "generated_grid.png",
            sorted((project / "data/07_model_output/generated" / v).glob("*.png")),
        )
        for v in runs
    ]


def test_generate_reproduces_the_grid_bit_for_bit(generated) -> None:
    (grid1, pngs1), (grid2, pngs2) = generated
    assert grid1.read_bytes() == grid2.read_bytes()
    assert [p.name for p in pngs1] == [f"mine_{k:03d}.png" for k in range(6)]
    assert [p.read_bytes() for p in pngs1] == [p.read_bytes() for p in pngs2]
    assert np.asarray(Image.open(pngs1[0])).shape == (28, 28)


def readme_snippet() -> str:
    """The diffusers snippet of the README (between its markers)."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- diffusers-snippet -->")[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_export_samples_in_a_clean_interpreter_as_generate_did(
    project, generated, tmp_path
) -> None:
    out = tmp_path / "export"
    proc = spire_cli(project, "export", "--env", "quick", "--out", str(out))
    assert proc.returncode == 0, describe(proc)
    assert {p.name for p in out.iterdir()} == {
        "unet",
        "scheduler",
        "sampler",
        "client_embeddings.safetensors",
        "spire_export.json",
    }
    snippet = readme_snippet()
    snippet, n = re.subn(r"(?m)^folder = .*$", f"folder = {str(out)!r}", snippet)
    snippet, m = re.subn(
        r"(?m)^client, num, seed = .*$", 'client, num, seed = "mine", 6, 4', snippet
    )
    assert n == m == 1, "the README snippet lost its `folder =` or `client, num, seed =` line"
    result = tmp_path / "images.npy"
    script = tmp_path / "snippet.py"
    script.write_text(
        "import sys\n"
        "sys.modules['spire_pipeline'] = None  # any import of the project fails\n"
        + snippet
        + f"\nimport numpy\nnumpy.save({str(result)!r}, images.numpy())\n"
    )
    env = {k: v for k, v in kedro_env(project, ONE_THREAD).items() if k != "PYTHONPATH"}
    clean = subprocess.run(
        [sys.executable, "-I", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert clean.returncode == 0, describe(clean)
    images = np.load(result)
    assert images.shape == (6, 1, 28, 28) and images.dtype == np.uint8
    _, pngs = generated[0]
    ours = np.stack([np.asarray(Image.open(p)) for p in pngs])
    np.testing.assert_array_equal(images[:, 0], ours)


BAD_INPUTS = {
    "empty folder": "the folder is empty",
    "text file named .png": "notes.png: not a readable image",
    "npz without images": "no array named 'images' (it holds ['labels'])",
    "colour images": "img_00.png: a colour image, but the backbone is greyscale",
    "too few images": "only 3 images; personalising needs at least 10",
}

#: Runs ``client_commands.main`` (what ``spire-pipeline`` runs) once per bad input in one
#: process (one start-up instead of five), printing each exit status and the error line.
DRIVER = """
import contextlib, io, json, sys
from spire_pipeline import client_commands
out = {}
for case, images in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = client_commands.main(
            ["personalize", "--env", "quick", "--images", images, "--name", "x"]
        )
    out[case] = [code, err.getvalue()]
print("RESULT " + json.dumps(out))
"""


def _bad_input(case: str, folder: Path, fashion_mnist) -> str:
    imgs = fashion_mnist.test_images
    if case == "empty folder":
        folder.mkdir()
    elif case == "text file named .png":
        write_pngs(folder, imgs[:20])
        (folder / "notes.png").write_text("this is text\n")
    elif case == "npz without images":
        folder = folder.with_suffix(".npz")
        np.savez(folder, labels=np.zeros(20, np.int64))
    elif case == "colour images":
        rng = np.random.default_rng(0)
        write_pngs(folder, rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8))
    else:  # too few images
        write_pngs(folder, imgs[:3])
    return str(folder)


def test_a_bad_input_exits_non_zero_with_one_clear_line(project, fashion_mnist, tmp_path) -> None:
    images = _bad_input("text file named .png", tmp_path / "bad", fashion_mnist)
    proc = spire_cli(project, "personalize", "--env", "quick", "--images", images, "--name", "x")
    assert proc.returncode == 2, describe(proc)
    last = proc.stderr.strip().splitlines()[-1]
    culprit = f"{images}/notes.png"
    expected = (
        f"{ERROR_PREFIX}{culprit}: not a readable image (cannot identify image file {culprit!r})"
    )
    assert last == expected, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr


def test_each_bad_input_gives_one_clear_line(project, fashion_mnist, tmp_path) -> None:
    import json

    cases = {
        c: _bad_input(c, tmp_path / f"bad{k}", fashion_mnist) for k, c in enumerate(BAD_INPUTS)
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        cwd=project,
        env=kedro_env(project, ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr
    results = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for case, expected in BAD_INPUTS.items():
        code, printed = results[case]
        assert code == 2, (case, printed)
        assert printed.count("\n") == 1 and printed.startswith(ERROR_PREFIX), (case, printed)
        assert expected in printed, (case, printed)


def test_without_a_command_it_still_runs_like_kedro_run(project) -> None:
    proc = spire_cli(project, "--help", timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert "--pipeline" in proc.stdout and "Run the pipeline." in proc.stdout
