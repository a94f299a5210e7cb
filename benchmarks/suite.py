"""The benchmark suite: every speed and cost figure of the project in one table, with ratios.

Measures in one run (warm-ups, medians of interleaved repeats) and writes
``data/08_reporting/benchmarks.csv`` (columns ``benchmark, value, unit, reference,
reference_value, ratio, target, meets``), then prints it:

- machine: fp32 and bf16 matrix-product GFLOP/s (the reference for FLOP/s rows);
- training: ``local_train`` images/s (fp32, bf16) against a plain PyTorch + diffusers loop on
  the same model, data and batch; achieved GFLOP/s of a training step (``torch.utils``' FLOP
  counter) against the matrix product;
- adaptation: seconds per step and peak memory of each method against ``full_finetune``
  (a fresh process, ``_suite_memory.py``);
- sampling: images/s per sampler and step count (those the configs use, and candidates), in
  fp32 and bf16; KID feature extraction images/s;
- sampler KID: DDPM-50, DDIM-25 and DPM-Solver++-20 on the same model against the same real
  images, with the noise over sample seeds and subsets (the newest pretrained ``spire`` bundle
  under ``--models``, else the model the precision section trains);
- precision: ``spire`` pretrained a few rounds in fp32 and in bf16 (same seed): final loss,
  seconds per round, KID;
- federation: bytes per client and round per method against the backbone; the ``inprocess``
  engine's peak memory with 10, 100 and 1,000 clients beyond the clients' own tensors;
- main job: wall time per pipeline of the newest ``kedro run`` in MLflow (``timing.*``
  metrics of ``PipelineTimingHook``), and the heavy pipelines' time projected from the costs
  measured here (fp32 and bf16; today's sampler and the cheapest one within KID noise).

    .venv/bin/python benchmarks/suite.py [--quick] [--env base] [--models DIR] [--only ...]

``--quick`` uses ``conf/quick`` sizes and few repeats (a smoke run, about a minute); its
figures are not the project's. Timings on a machine shared with other work are indicative.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _suite_common import (
    COLUMNS,
    ROOT,
    Row,
    fmt,
    load_client_splits,
    load_parameters,
    matmul_gflops,
    memory_supported,
    row_vs,
    run_worker,
)

SECTIONS = (
    "machine",
    "training",
    "adaptation",
    "sampling",
    "precision",
    "sampler_kid",
    "federation",
    "main_job",
)
ADAPT_METHODS = ("full_finetune", "spire", "bitfit", "lora", "head")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="conf/quick sizes, few repeats")
    ap.add_argument("--env", default=None, help="parameters (default: base; quick with --quick)")
    ap.add_argument(
        "--models",
        type=Path,
        default=ROOT / "data/06_models/pretrained",
        help="pretrained bundles (a version folder, or the versioned dataset's folder: newest)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "data/08_reporting/benchmarks.csv")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--mlflow-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"of {','.join(SECTIONS)}")
    ap.add_argument("--precision-rounds", type=int, default=None, help="default 100 (quick 2)")
    ap.add_argument("--kid-seeds", type=int, default=None, help="default 3 (quick 2)")
    ap.add_argument("--kid-clients", type=int, default=None, help="default 3 (quick 1)")
    ap.add_argument("--save-models", type=Path, default=None, help="keep the precision runs")
    args = ap.parse_args(argv)
    args.env = args.env or ("quick" if args.quick else "base")
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


class Sizes:
    """How much each section measures (smaller with ``--quick``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        q = args.quick
        self.matmul_n = 512 if q else 1024
        self.train_steps = 3 if q else 10
        self.repeats = 2 if q else 5
        self.adapt_steps = 2 if q else 20
        self.precision_rounds = args.precision_rounds or (2 if q else 100)
        self.kid_seeds = args.kid_seeds or (2 if q else 3)
        self.kid_clients = args.kid_clients or (1 if q else 3)
        self.client_counts = (10, 100, 1000)
        self.client_images = 8 if q else 64
        self.client_rounds = 1 if q else 2
        self.feature_images = 32 if q else 400


def newest_bundles(folder: Path) -> tuple[dict, Path] | tuple[None, None]:
    """The pretrained bundles of the newest version under ``folder`` (or in it)."""
    from spire_pipeline.datasets.model_bundle_dataset import ModelBundleDataset

    if not folder.is_dir():
        return None, None
    candidates = [folder] + sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True)
    for version in candidates:
        files = sorted(version.glob("*.safetensors"))
        if files:
            return {f.stem: ModelBundleDataset(filepath=str(f)).load() for f in files}, version
    return None, None


class Suite:
    """Runs the sections in order, collecting rows and the costs later sections reuse."""

    def __init__(self, args: argparse.Namespace) -> None:
        from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, PretrainingConfig
        from spire_pipeline.spire.model import resolve_device

        self.args, self.sizes = args, Sizes(args)
        self.sections = args.only.split(",")
        self.params = load_parameters(args.env)
        self.pcfg = PretrainingConfig(**self.params["federated_pretraining"])
        self.acfg = AdaptationConfig(**self.params["client_adaptation"])
        self.kcfg = KIDConfig(**self.params["kid_evaluation"])
        self.device = resolve_device(args.device)
        self.threads = torch.get_num_threads()
        self.rows: list[Row] = []
        self.costs: dict = {"adapt_s_per_step": {}, "sample_ips": {}}
        self._splits = None
        self._extractor = None
        self._real: dict[str, np.ndarray] = {}
        self.matmul: dict[str, float] = {}
        self.precision_runs = None
        self.kid_results: dict = {}
        self._memory: list[tuple[dict, dict]] | None = None
        self.adapt_methods = list(dict.fromkeys([*ADAPT_METHODS, *self.acfg.methods]))

    # ------------------------------------------------------------------ shared inputs
    @property
    def splits(self):
        if self._splits is None:
            self._splits = load_client_splits(self.params, self.args.env)
        return self._splits

    def seen(self) -> list:
        return [s for s in self.splits.values() if s.role == "seen"]

    def seen_clients(self):
        from spire_pipeline.spire.diffusion import to_model_space
        from spire_pipeline.spire.federated import ClientData

        return [ClientData(s.client, to_model_space(s.train_images)) for s in self.seen()]

    @property
    def extractor(self):
        if self._extractor is None:
            from spire_pipeline.spire.features import build_feature_extractor

            self._extractor = build_feature_extractor(
                self.kcfg.extractor,
                self.kcfg.image_size,
                batch_size=self.kcfg.batch_size,
                device=str(self.device),
            )
        return self._extractor

    def real_features(self, clients: list) -> dict[str, np.ndarray]:
        for c in clients:
            if c.client not in self._real:
                images = c.test_images[: self.kcfg.max_real]
                self._real[c.client] = self.extractor(images, progress=False)
        return self._real

    # ------------------------------------------------------------------ sections
    def machine(self) -> None:
        n, reps = self.sizes.matmul_n, self.sizes.repeats
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            self.matmul[precision] = matmul_gflops(dtype, self.device, n, reps)
            self.rows.append(
                Row(
                    f"matrix product {n}x{n} {precision} ({self.threads} threads)",
                    self.matmul[precision],
                    "GFLOP/s",
                )
            )

    def training(self) -> None:
        from _suite_training import training_rows

        if not self.matmul:
            self.machine()
        images = self.seen_clients()[0].images
        res = training_rows(
            self.pcfg, images, self.device, self.sizes.train_steps, self.sizes.repeats, self.matmul
        )
        self.rows += res.rows
        self.costs["train_s_per_step"] = res.seconds_per_step

    def _adapt_jobs(self) -> list[dict]:
        dp = self.params["data_partitioning"]
        own = self.acfg.local.precision
        # bf16 too (for the projection), except in a quick run
        precisions = [own] if self.args.quick else list(dict.fromkeys([own, "fp32", "bf16"]))
        jobs = []
        for precision in precisions:
            for m in self.adapt_methods:
                local = self.acfg.local.model_copy(update={"precision": precision})
                acfg = self.acfg.model_copy(update={"local": local, "device": str(self.device)})
                jobs.append(
                    {
                        "kind": "adapt",
                        "method": m,
                        "precision": precision,
                        "steps": self.sizes.adapt_steps,
                        "images": dp["unseen_train_size"],
                        "pretraining": self.pcfg.model_dump(),
                        "adaptation": acfg.model_dump(),
                    }
                )
        return jobs

    def _client_jobs(self) -> list[dict]:
        pcfg = self.pcfg.model_copy(update={"device": "cpu"})
        return [
            {
                "kind": "clients",
                "n": n,
                "images": self.sizes.client_images,
                "rounds": self.sizes.client_rounds,
                "pretraining": pcfg.model_dump(),
            }
            for n in self.sizes.client_counts
        ]

    def memory(self, kind: str) -> list[tuple[dict, dict]]:
        """(job, result) pairs of ``kind``; one worker process runs every section's jobs."""
        if self._memory is None:
            jobs = []
            if "adaptation" in self.sections:
                jobs += self._adapt_jobs()
            if "federation" in self.sections:
                jobs += self._client_jobs()
            self._memory = list(zip(jobs, run_worker(jobs, self.threads)))
        return [(j, r) for j, r in self._memory if j["kind"] == kind]

    def adaptation(self) -> None:
        if self.device.type == "cpu" and not memory_supported():
            self.rows.append(Row("adaptation peak memory", "n/a", "MiB", "needs Linux /proc"))
            return
        methods = self.adapt_methods
        by = {(j["method"], j["precision"]): r for j, r in self.memory("adapt")}
        own = self.acfg.local.precision
        for precision in {p for _, p in by}:
            self.costs["adapt_s_per_step"][precision] = {
                m: by[(m, precision)]["seconds_per_step"] for m in methods
            }
        full = by[("full_finetune", own)]
        batch = self.acfg.local.batch_size
        for m in methods:
            r = by[(m, own)]
            target_t = "<= 0.6" if m == "spire" else ""
            target_m = "<= 0.7" if m == "spire" else ""
            what = f"{m} ({r['trained_params']:,} weights trained; batch {batch}, {own})"
            self.rows.append(
                row_vs(
                    f"adaptation seconds per step: {what}",
                    r["seconds_per_step"],
                    "s/step",
                    "full_finetune",
                    full["seconds_per_step"],
                    target_t,
                    (lambda x: x <= 0.6) if m == "spire" else None,
                )
            )
            self.rows.append(
                row_vs(
                    f"adaptation peak memory: {what}",
                    r["peak_mib"],
                    "MiB" if self.device.type == "cpu" else "MiB (GPU)",
                    "full_finetune",
                    full["peak_mib"],
                    target_m,
                    (lambda x: x <= 0.7) if m == "spire" else None,
                )
            )

    def sampling(self) -> None:
        from _suite_sampling import CANDIDATES, configured_samplers, feature_rows, sampling_rows

        envs = {}
        for folder in sorted((ROOT / "conf").iterdir()):
            if folder.is_dir() and folder.name != "local" and any(folder.glob("parameters*")):
                envs[folder.name] = load_parameters(folder.name)
        used = configured_samplers(envs)
        pairs = list(dict.fromkeys([*used, *CANDIDATES]))
        batch = min(self.kcfg.batch_size, self.kcfg.num_generated)
        rows, speed = sampling_rows(
            self.pcfg.backbone, self.pcfg.diffusion, pairs, used, batch, self.device,
            ["fp32", "bf16"],
        )  # fmt: skip
        self.rows += rows
        self.costs["sample_ips"] = speed
        images = np.concatenate([s.test_images for s in self.seen()])[: self.sizes.feature_images]
        frows, ips = feature_rows(self.extractor, images, 1 if self.args.quick else 3)
        self.rows += frows
        self.costs["feature_ips"] = ips

    def precision(self) -> None:
        from _suite_training import loss_rows, pretrain_runs

        self.precision_runs = pretrain_runs(
            self.pcfg, self.seen_clients(), self.sizes.precision_rounds, ["fp32", "bf16"]
        )
        self.rows += loss_rows(self.precision_runs)
        self.costs["s_per_round"] = {p: r.seconds_per_round for p, r in self.precision_runs.items()}
        if self.args.save_models:
            from spire_pipeline.datasets.model_bundle_dataset import ModelBundleDataset

            for p, r in self.precision_runs.items():
                path = self.args.save_models / p / "spire.safetensors"
                path.parent.mkdir(parents=True, exist_ok=True)
                ModelBundleDataset(filepath=str(path)).save(r.bundle)
        self._precision_kid()

    def _kid(self, bundle, key: str, sampler: str, steps: int, precision: str):
        from _suite_sampling import sampler_kid

        k = (key, sampler, steps, precision)
        if k not in self.kid_results:
            clients = self.seen()[: self.sizes.kid_clients]
            self.kid_results[k] = sampler_kid(
                bundle, clients, self.real_features(clients), self.extractor, self.kcfg,
                sampler, steps, self.sizes.kid_seeds, self.kcfg.num_generated, self.device,
                precision,
            )  # fmt: skip
        return self.kid_results[k]

    def _precision_kid(self) -> None:
        from _suite_sampling import kid_rows

        d = self.pcfg.diffusion
        steps = self.kcfg.sampler_steps or d.sampler_steps
        runs = self.precision_runs
        rounds = self.sizes.precision_rounds
        fp32 = self._kid(runs["fp32"].bundle, "suite-fp32", d.sampler, steps, "fp32")
        both = self._kid(runs["bf16"].bundle, "suite-bf16", d.sampler, steps, "bf16")
        what = f"spire trained {rounds} rounds here; {self._kid_what()}"
        self.rows += kid_rows([both], fp32, f"bf16 training and sampling; {what}")
        bundle, key, label = self._kid_model()
        ref = self._kid(bundle, key, d.sampler, steps, "fp32")
        samp = self._kid(bundle, key, d.sampler, steps, "bf16")
        self.rows += kid_rows([samp], ref, f"bf16 sampling only; {label}")
        self._precision_adaptation(bundle, label)

    def _precision_adaptation(self, bundle, label: str) -> None:
        """spire's adaptation to unseen clients in bf16 against fp32: final loss, same seeds."""
        from spire_pipeline.spire.adaptation import adapt
        from spire_pipeline.spire.diffusion import to_model_space
        from spire_pipeline.spire.federated import ClientData

        unseen = [s for s in self.splits.values() if s.role == "unseen"][: self.sizes.kid_clients]
        clients = [ClientData(s.client, to_model_space(s.train_images)) for s in unseen]
        tails = {}
        for precision in ("fp32", "bf16"):
            local = self.acfg.local.model_copy(update={"precision": precision})
            cfg = self.acfg.model_copy(update={"local": local})
            tails[precision] = [
                np.array(adapt("spire", {"spire": bundle}, c, cfg).result.losses) for c in clients
            ]

        def final(losses: list[np.ndarray]) -> tuple[float, float]:
            tail = np.concatenate([x[-max(2, len(x) // 4) :] for x in losses])
            return float(tail.mean()), float(tail.std(ddof=1) / np.sqrt(len(tail)))

        (l32, se32), (l16, se16) = final(tails["fp32"]), final(tails["bf16"])
        noise = 2 * float(np.hypot(se32, se16))
        steps = len(tails["fp32"][0])
        self.rows.append(
            Row(
                f"precision bf16: spire adaptation final loss ({len(clients)} unseen clients x "
                f"{steps} steps; {label})",
                l16,
                "DDPM loss",
                f"fp32 (2 x standard error of the difference: {noise:.4f})",
                l32,
                l16 / l32,
                "within 2 standard errors of fp32",
                abs(l16 - l32) <= noise,
            )
        )

    def _kid_what(self) -> str:
        c, s, n = self.sizes.kid_clients, self.sizes.kid_seeds, self.kcfg.num_generated
        return f"{c} seen clients x {s} seeds x {n} samples"

    def _kid_model(self):
        """The model the sampler comparison uses: --models' spire, else this run's fp32 one."""
        bundles, version = newest_bundles(self.args.models)
        if bundles and "spire" in bundles:
            rel = version.relative_to(ROOT) if version.is_relative_to(ROOT) else version
            return bundles["spire"], f"models:{version}", f"pretrained spire from {rel}"
        if self.precision_runs is None:
            self.precision()
        rounds = self.sizes.precision_rounds
        label = f"spire trained {rounds} rounds in this suite (no pretrained bundle found)"
        return self.precision_runs["fp32"].bundle, "suite-fp32", label

    def sampler_kid(self) -> None:
        from _suite_sampling import CANDIDATES, kid_rows, within_noise

        bundle, key, label = self._kid_model()
        results = [self._kid(bundle, key, s, n, "fp32") for s, n in CANDIDATES]
        what = f"{label}; {self._kid_what()}"
        self.rows += kid_rows(results, results[0], what)
        ok = [(s, n) for (s, n), r in zip(CANDIDATES, results) if within_noise(r, results[0])[0]]
        self.costs["cheapest_sampler"] = min(ok, key=lambda p: p[1])

    def federation(self) -> None:
        from _suite_federation import bytes_rows, client_rows

        self.rows += bytes_rows(self.pcfg, self.pcfg.local.batch_size)
        if not memory_supported():
            self.rows.append(Row("inprocess peak memory", "n/a", "MiB", "needs Linux /proc"))
            return
        self.rows += client_rows({j["n"]: r for j, r in self.memory("clients")})

    def main_job(self) -> None:
        from _suite_mainjob import main_job_rows, projection_rows

        self.rows += main_job_rows(self.args.mlflow_uri)
        c = self.costs
        needed = ("s_per_round", "feature_ips")
        if not all(k in c for k in needed) or not c["adapt_s_per_step"] or not c["sample_ips"]:
            return
        d = self.pcfg.diffusion
        today = (d.sampler, self.kcfg.sampler_steps or d.sampler_steps)
        options = [("fp32", today), ("bf16", today)]
        cheap = c.get("cheapest_sampler")
        if cheap and cheap[1] < today[1]:
            options += [("fp32", cheap), ("bf16", cheap)]
        for precision, (sampler, steps) in options:
            ips = c["sample_ips"].get((sampler, steps, precision))
            if ips is None or precision not in c["adapt_s_per_step"]:
                continue
            costs = {
                "s_per_round": c["s_per_round"][precision],
                "adapt_s_per_step": c["adapt_s_per_step"][precision],
                "sample_ips": ips,
                "feature_ips": c["feature_ips"],
            }
            label = f"conf/{self.args.env}, {precision}, {sampler}-{steps}"
            self.rows += projection_rows(self.params, costs, label)

    # ------------------------------------------------------------------ running
    def run(self) -> pd.DataFrame:
        order = [s for s in SECTIONS if s in self.sections]
        for section in order:
            t0 = time.perf_counter()
            print(f"[suite] {section} ...", file=sys.stderr, flush=True)
            getattr(self, section)()
            print(f"[suite] {section}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return pd.DataFrame([r.as_dict() for r in self.rows], columns=list(COLUMNS))


def markdown(table: pd.DataFrame) -> str:
    """The table in Markdown (printed, and pasted into docs/benchmarks.md)."""
    head = "| benchmark | value | unit | reference | reference value | ratio | target | meets |"
    lines = [head, "|---|--:|---|---|--:|--:|---|---|"]
    for r in table.itertuples(index=False):
        missing = r.meets is None or (isinstance(r.meets, float) and np.isnan(r.meets))
        meets = "" if missing else str(r.meets)
        cells = [r.benchmark, fmt(r.value), r.unit, r.reference, fmt(r.reference_value)]
        cells += [fmt(r.ratio), r.target, meets]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    suite = Suite(args)
    print(
        f"[suite] env {args.env}, device {suite.device}, torch {torch.__version__}, "
        f"{suite.threads} threads",
        file=sys.stderr,
    )
    table = suite.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    text = markdown(table)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    minutes = (time.perf_counter() - start) / 60
    print(f"\n{len(table)} rows in {minutes:.1f} min -> {args.out}")
    if any(isinstance(v, float) and math.isnan(v) for v in table["value"]):
        print("warning: some values are NaN", file=sys.stderr)


if __name__ == "__main__":
    main()
