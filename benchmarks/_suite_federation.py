"""Suite rows on the ``inprocess`` engine: bytes per round per method, memory per client count."""

from __future__ import annotations

from _suite_common import Row, random_images

from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import ClientData, Trainer, pretrain, state_bytes
from spire_pipeline.spire.methods import PRETRAINING_METHODS
from spire_pipeline.spire.model import state_of


def bytes_rows(pcfg: PretrainingConfig, images: int) -> list[Row]:
    """Bytes each client receives and sends per round, per method, against the backbone's size.

    Up: the arrays in the update a client actually returns (``Trainer.train``). Down: what the
    round record says the server sent, per client. One round, one local step, 3 clients.
    """
    size, ch = pcfg.backbone.image_size, pcfg.backbone.channels
    clients = [ClientData(f"c{k}", random_images(images, size, ch, k)) for k in range(3)]
    local = pcfg.local.model_copy(update={"steps": 1, "epochs": None})
    cfg = pcfg.model_copy(
        update={"rounds": 1, "client_fraction": 1.0, "resume": False, "local": local}
    )
    rows = []
    for method in PRETRAINING_METHODS:
        trainer = Trainer(method, cfg)
        backbone = state_of(trainer.model)
        full = state_bytes(backbone)
        update, _ = trainer.train(
            backbone, clients[0], trainer.initial_client_state(0, len(clients)), 0, 0
        )
        up = state_bytes(update.upload)
        private = sorted(set(update.upload) - set(backbone))
        _, history = pretrain(method, cfg, clients, progress=False)
        down = history[0]["bytes_down"] / len(history[0]["clients"])
        for direction, value in (("up", up), ("down", down)):
            rows.append(
                Row(
                    f"bytes {direction} per client and round: {method}",
                    value,
                    "bytes",
                    "the whole backbone",
                    full,
                    value / full,
                    "<= 1.0 (backbone arrays only)",
                    value <= full and not private,
                )
            )
    return rows


def client_rows(results: dict[int, dict]) -> list[Row]:
    """Peak memory of ``pretrain`` per client count, beyond the clients' own tensors."""
    sizes = sorted(results)
    ref = results[sizes[0]]["not_owned_mib"]
    rows = []
    for n in sizes:
        r = results[n]
        rows.append(
            Row(
                f"inprocess peak memory beyond the clients' own tensors, {n} clients "
                f"(3 train per round; own tensors {r['own_mib']:.1f} MiB, "
                f"peak {r['peak_mib']:.1f} MiB)",
                r["not_owned_mib"],
                "MiB",
                f"the same with {sizes[0]} clients",
                ref,
                r["not_owned_mib"] / ref if ref else float("nan"),
                "<= 1.1 (flat)",
                r["not_owned_mib"] <= 1.1 * ref + 1.0,  # 1 MiB: page-granular RSS noise
            )
        )
    return rows
