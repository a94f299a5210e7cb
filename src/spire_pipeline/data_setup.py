"""Obtain Fashion-MNIST into ``data/01_raw/fashion-mnist`` and check it (stdlib only).

Sources, in order: files already in place, Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``, installed with apt-get when we are root), then the
dataset's public home. Every file is checked by the SHA-256 of its *decompressed* IDX bytes,
which is the same whichever gzip encoder packed it.

Usage: ``python -m spire_pipeline.data_setup [--dest DIR] [--no-apt] [--no-download]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

#: name -> (SHA-256 of the decompressed IDX bytes, decompressed size in bytes)
FASHION_MNIST_FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte.gz": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47040016,
    ),
    "train-labels-idx1-ubyte.gz": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60008,
    ),
    "t10k-images-idx3-ubyte.gz": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7840016,
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10008,
    ),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
PUBLIC_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEFAULT_DEST = Path("data/01_raw/fashion-mnist")


class DataSetupError(RuntimeError):
    """The dataset could not be obtained or failed its checksum."""


def file_digest(path: Path) -> str:
    """SHA-256 of the decompressed bytes of a gzip file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError) as exc:
        raise DataSetupError(f"{path}: not a readable gzip file ({exc})") from exc
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    """Whether ``path`` exists and holds the expected Fashion-MNIST file."""
    if not path.is_file():
        return False
    try:
        return file_digest(path) == FASHION_MNIST_FILES[path.name][0]
    except DataSetupError:
        return False


def _apt_install() -> bool:
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    print(f"[data_setup] apt-get install {DEBIAN_PACKAGE}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE], env=env).returncode
    if ok != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        ok = subprocess.run(["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE], env=env).returncode
    return ok == 0


def _download(name: str, dest: Path) -> None:
    url = PUBLIC_URL + name
    print(f"[data_setup] downloading {url}", flush=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, tmp)
        except OSError as exc:
            os.unlink(tmp.name)
            raise DataSetupError(f"download of {url} failed: {exc}") from exc
    os.replace(tmp.name, dest)


def obtain(dest: Path = DEFAULT_DEST, use_apt: bool = True, download: bool = True) -> Path:
    """Place the four checked Fashion-MNIST files in ``dest``; reuse valid ones."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [n for n in FASHION_MNIST_FILES if not is_valid(dest / n)]
    if missing and use_apt and not all((DEBIAN_DIR / n).is_file() for n in missing):
        _apt_install()
    for name in missing:
        target = dest / name
        source = DEBIAN_DIR / name
        if source.is_file() and is_valid(source):
            shutil.copyfile(source, target)
        elif download:
            _download(name, target)
        if not is_valid(target):
            raise DataSetupError(
                f"{target}: missing or its SHA-256 does not match Fashion-MNIST's "
                f"{FASHION_MNIST_FILES[name][0]}. Install the Debian package {DEBIAN_PACKAGE} "
                f"or download {PUBLIC_URL}{name} into {dest}/"
            )
    print(f"[data_setup] Fashion-MNIST ready in {dest} (4 files, SHA-256 checked)", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--no-apt", action="store_true", help="never call apt-get")
    parser.add_argument("--no-download", action="store_true", help="never download")
    args = parser.parse_args(argv)
    try:
        obtain(args.dest, use_apt=not args.no_apt, download=not args.no_download)
    except DataSetupError as exc:
        print(f"[data_setup] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
