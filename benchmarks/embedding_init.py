"""Compare SPIRE's initialisations of a new client's embedding: zeros, mean_seen, random.

Uses the newest pretrained ``spire`` bundle and client splits in data/ (run the main job
first). Each unseen client's train split is cut 80/20: the embedding is trained on the 80 %
with ``client_adaptation``'s budget, and scored by the DDPM loss on the held-out 20 % with
fixed noise and timesteps (the same for every initialisation). The test splits are never used.
Prints a table; the lowest mean validation loss picks the default ``embedding_init``.

Usage: python benchmarks/embedding_init.py [--env base] [--repeats 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from _latest import client_splits, newest

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.adaptation import adapt, build_adapted
from spire_pipeline.spire.config import AdaptationConfig
from spire_pipeline.spire.diffusion import ddpm_loss, make_scheduler, to_model_space
from spire_pipeline.spire.federated import ClientData


@torch.inference_mode()
def validation_loss(bundle, pretrained, client: str, images: torch.Tensor, repeats: int) -> float:
    model, emb = build_adapted(bundle, pretrained, client)
    sched = make_scheduler(bundle.diffusion_cfg)
    g = torch.Generator().manual_seed(1234)
    cond = emb.expand(images.shape[0], -1)

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    return float(
        np.mean([ddpm_loss(denoise, sched, images, cond, g).item() for _ in range(repeats)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = {}
    for env in ("base", args.env):
        f = Path(f"conf/{env}/parameters_client_adaptation.yml")
        if f.exists():
            params |= yaml.safe_load(f.read_text())["client_adaptation"]
    version = newest("data/06_models/pretrained")
    spire = ModelBundleDataset(filepath=str(version / "spire.safetensors")).load()
    pretrained = {"spire": spire}
    unseen = client_splits("unseen")
    print(f"spire bundle {version.name}; {len(unseen)} unseen clients; budget {params['local']}")
    print(f"{'client':>10} " + " ".join(f"{i:>10}" for i in ("zeros", "mean_seen", "random")))
    results: dict[str, list[float]] = {"zeros": [], "mean_seen": [], "random": []}
    for s in unseen:
        x = to_model_space(s.train_images)
        cut = int(0.8 * len(x))
        train, val = ClientData(s.client, x[:cut]), x[cut:]
        row = []
        for init, losses in results.items():
            cfg = AdaptationConfig.model_validate(
                {**params, "embedding_init": init, "methods": ["spire"]}
            )
            a = adapt("spire", pretrained, train, cfg)
            loss = validation_loss(a.bundle, pretrained, s.client, val, args.repeats)
            losses.append(loss)
            row.append(loss)
        print(f"{s.client:>10} " + " ".join(f"{v:>10.5f}" for v in row))
    print(f"{'mean':>10} " + " ".join(f"{np.mean(v):>10.5f}" for v in results.values()))
    print(f"lowest mean validation loss: {min(results, key=lambda k: np.mean(results[k]))}")


if __name__ == "__main__":
    main()
