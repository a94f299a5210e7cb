"""Pretrained models judged on the seen clients' validation images (held out of pretraining).

The DDPM loss at seeded timesteps and noise, the same draws for every method, so that methods
and schedules are compared paired. Pretraining choices (rounds x local steps, learning rates,
embedding scale) are justified on this, never on a test split.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.diffusion import heldout_losses, make_scheduler
from spire_pipeline.spire.federated import derive_seed
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.model import embedding_dim


def validation_table(
    bundles: dict[str, ModelBundle], images: dict[str, torch.Tensor], seed: int
) -> pd.DataFrame:
    """One row per (method, seen client): the DDPM loss of the client's validation images
    (model space) under the model that serves the client."""
    rows = []
    jobs = [(m, c) for m in sorted(bundles) for c in sorted(images) if len(images[c])]
    for method, client in tqdm(jobs, desc="validation loss", leave=False):
        bundle = bundles[method]
        model, emb = bundle.build(client if PRETRAINING[method].per_client else None)
        cond = torch.zeros(embedding_dim(model)) if emb is None else emb

        def denoise(x, t, c, model=model):
            return model(x, t, class_labels=c).sample

        (loss,) = heldout_losses(
            denoise,
            make_scheduler(bundle.diffusion_cfg),
            images[client],
            cond[None],
            derive_seed(seed, "validation", client),
        )
        rows.append({"method": method, "client": client, "val_loss": float(loss)})
    return pd.DataFrame(rows, columns=["method", "client", "val_loss"])
