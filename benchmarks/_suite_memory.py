"""Memory worker of ``benchmarks/suite.py``: peak memory of adaptation and of the ``inprocess``
engine with many clients, measured in a fresh process (``run_worker`` starts it).

Reads a JSON list of jobs on stdin, writes a JSON list of results as its last stdout line. Each
job is measured from its own baseline: the resident set size is taken after a warm-up, the
peak is reset (``/proc/self/clear_refs``), the job runs, and the peak above the baseline is
what it needed. The parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the
resident set. On a CUDA device, adaptation's peak is torch's GPU peak instead. Weights are
random: time and memory do not depend on their values.

Usage (by the suite): ``python benchmarks/_suite_memory.py THREADS < jobs.json``
"""

from __future__ import annotations

import gc
import json
import sys

import torch
from _suite_common import peak_rss_mib, random_images, reset_peak_rss, rss_mib

from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, PretrainingConfig
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.model import build_backbone, resolve_device, state_of


def random_pretrained(pcfg: PretrainingConfig, num_seen: int) -> dict[str, ModelBundle]:
    """``spire`` and ``fedavg`` bundles with random weights, in the shapes of ``pcfg``."""
    model = build_backbone(pcfg.backbone, seed=0)
    dim = 4 * pcfg.backbone.block_out_channels[0]
    g = torch.Generator().manual_seed(0)
    embeddings = {f"seen_{k}": torch.randn(dim, generator=g) for k in range(num_seen)}
    common = {"backbone_cfg": pcfg.backbone, "diffusion_cfg": pcfg.diffusion}
    return {
        "spire": ModelBundle("spire", backbone=state_of(model), embeddings=embeddings, **common),
        "fedavg": ModelBundle("fedavg", backbone=state_of(model), **common),
    }


def adapt_job(job: dict) -> dict:
    """Seconds per step and peak memory of one adaptation method."""
    pcfg = PretrainingConfig(**job["pretraining"])
    acfg = AdaptationConfig(**job["adaptation"])
    pretrained = random_pretrained(pcfg, 4)
    size, ch = pcfg.backbone.image_size, pcfg.backbone.channels
    client = ClientData("unseen_0", random_images(job["images"], size, ch, seed=1))
    warm = acfg.local.model_copy(update={"steps": 1, "epochs": None})
    adapt(job["method"], pretrained, client, acfg, local=warm)
    local = acfg.local.model_copy(update={"steps": job["steps"], "epochs": None})
    gc.collect()
    cuda = resolve_device(acfg.device).type == "cuda"
    if cuda:  # GPU memory: torch's own peak statistics
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = reset_peak_rss()
    a = adapt(job["method"], pretrained, client, acfg, local=local)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()) - base
    return {
        "seconds_per_step": a.seconds / job["steps"],
        "peak_mib": peak,
        "trained_params": a.trained_params,
    }


def clients_job(job: dict) -> dict:
    """Peak memory of ``pretrain`` with ``n`` clients, 3 of them training per round."""
    pcfg = PretrainingConfig(**job["pretraining"])
    cfg = pcfg.model_copy(
        update={
            "methods": ["spire"],
            "rounds": job["rounds"],
            "client_fraction": 1e-6,  # so that exactly min_clients train per round
            "min_clients": 3,
            "resume": False,
            "local": pcfg.local.model_copy(update={"steps": 1, "epochs": None}),
        }
    )
    size, ch = pcfg.backbone.image_size, pcfg.backbone.channels
    warm = [ClientData(f"w{k}", random_images(job["images"], size, ch, k)) for k in range(3)]
    pretrain("spire", cfg.model_copy(update={"rounds": 1}), warm, progress=False)
    del warm
    gc.collect()
    base = rss_mib()
    clients = [
        ClientData(f"c{k}", random_images(job["images"], size, ch, k)) for k in range(job["n"])
    ]
    dim = 4 * pcfg.backbone.block_out_channels[0]
    own = sum(c.images.numel() * c.images.element_size() + 4 * dim for c in clients) / 2**20
    reset_peak_rss()
    pretrain("spire", cfg, clients, progress=False)
    peak = peak_rss_mib() - base
    return {"peak_mib": peak, "own_mib": own, "not_owned_mib": peak - own}


JOBS = {"adapt": adapt_job, "clients": clients_job}


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]))
    jobs = json.loads(sys.stdin.read())
    results = []
    for job in jobs:
        results.append(JOBS[job["kind"]](job))
        gc.collect()
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main()
