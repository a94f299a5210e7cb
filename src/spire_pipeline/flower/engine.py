"""The ``flower`` engine on the Kedro side: start Flower, run one Flower run per method, follow
its rounds, collect its bundle, and stop everything it started.

- ``runtime: simulation``: a ``flower-superlink --simulation``; ``flwr run`` with one virtual
  client per seen client (Ray, ``num_cpus`` per client).
- ``runtime: deployment``: a ``flower-superlink`` and one ``flower-supernode`` per seen
  client on loopback, each told its client through ``--node-config``; with
  ``start_supernodes: false`` the SuperNodes run elsewhere
  (``docs/flower.md``).

Both run the same apps (:mod:`.server_app`, :mod:`.client_app`) from the Flower app written to
``<workdir>/app``. Flower never installs anything: the SuperLink runs with
``--disable-runtime-dependency-installation`` (SuperNodes install nothing unless told to),
and the app declares no dependencies; every machine runs the project's own environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import tomli
import tomli_w
from tqdm.auto import tqdm

from spire_pipeline.flower.processes import ProcessGroups, Started
from spire_pipeline.flower.task import RUN_CONFIG_DEFAULTS, Job, RunFiles, save_client_data
from spire_pipeline.interrupts import Interrupts
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import (
    ClientData,
    InProcessEngine,
    NotEnoughClientsError,
    config_fingerprint,
    load_checkpoint,
)
from spire_pipeline.spire.methods import PRETRAINING

log = logging.getLogger(__name__)

#: the SuperLink connections this engine adds to Flower's configuration
#: (``$FLWR_HOME/config.toml``) are named ``spire-pipeline-<port>``
CONNECTION = "spire-pipeline"
_APP_PYPROJECT = {
    "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
    "project": {
        "name": "spire-flower",
        "version": "1.0.0",
        "description": "SPIRE federated pretraining: the apps live in the spire_pipeline package",
        "license": "Apache-2.0",
        # nothing to install: every SuperLink and SuperNode host runs the project's environment
        "dependencies": [],
    },
    "tool": {
        "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
        "flwr": {
            "app": {
                "publisher": "spire",
                "components": {
                    "serverapp": "spire_pipeline.flower.server_app:app",
                    "clientapp": "spire_pipeline.flower.client_app:app",
                },
                "config": RUN_CONFIG_DEFAULTS,
            }
        },
    },
}
_POLL_S = 0.5
_MAX_SOCKET_DIR = 50  # Ray's AF_UNIX socket paths under RAY_TMPDIR must stay < 108 bytes


class FlowerRunError(RuntimeError):
    """A Flower run ended without a result (the message says why and where the logs are)."""


def write_app(folder: Path) -> Path:
    """The Flower app (a ``pyproject.toml`` naming the apps and their run config)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(_APP_PYPROJECT))
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _short_dir(folder: Path) -> Path:
    """``folder``, or a short link to it (Ray's socket paths must stay short)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(str(folder)) <= _MAX_SOCKET_DIR:
        return folder
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"spire-ray-{digest}"
    if not link.is_symlink():
        link.symlink_to(folder, target_is_directory=True)
    return link


class FlowerEngine:
    """Flower's processes for one Kedro node: use as a context manager around
    :meth:`pretrain` calls; leaving it (also on an error, Ctrl-C or SIGTERM) stops them all."""

    def __init__(
        self,
        cfg: PretrainingConfig,
        clients: Sequence[ClientData],
        project_dir: Path | None = None,
    ) -> None:
        self.cfg, self.flower = cfg, cfg.flower
        self.clients = list(clients)
        self.ids = [c.client for c in clients]
        self.project = (project_dir or Path.cwd()).resolve()
        self.workdir = self._path(self.flower.workdir)
        self.client_data = self.workdir / "clients"
        self.client_storage = self._path(self.flower.client_storage)
        self.audit_dir = self._path(self.flower.audit_dir) if self.flower.audit_dir else None
        self.processes = ProcessGroups(self.workdir / f"processes-{os.getpid()}.txt")
        self.superlink: Started | None = None
        self.supernodes: dict[str, Started] = {}
        self.port: int | None = None
        self.env: dict[str, str] = {}
        self.traffic: dict | None = None
        self._interrupts = Interrupts()

    def _path(self, value: str) -> Path:
        path = Path(value)
        return (path if path.is_absolute() else self.project / path).resolve()

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> FlowerEngine:
        self._interrupts.catch()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Write the app and the clients' data, start the SuperLink (and local SuperNodes)."""
        self.env = self._environment()
        self.app = write_app(self.workdir / "app")
        for c in self.clients:
            save_client_data(self.client_data / f"{c.client}.npz", c)
        self.port = self.flower.port or free_port(self.flower.host)
        self._write_connection()
        log.info(
            "Flower %s: starting a SuperLink on %s:%d (FLWR_HOME=%s)",
            self.flower.runtime,
            self.flower.host,
            self.port,
            self.env["FLWR_HOME"],
        )
        self.superlink = self.processes.start(
            "superlink",
            self._superlink_command(),
            self.workdir / "logs" / "superlink.log",
            self.env,
        )
        self._wait_healthy()
        if self.flower.runtime == "deployment" and self.flower.start_supernodes:
            self._start_supernodes()

    def stop(self) -> None:
        """Stop every process started here, with whatever they started, by process group."""
        if self.processes.started:
            log.info("Flower: stopping %d processes", len(self.processes.started))
        self.processes.stop()
        self._remove_connection()
        self._interrupts.release()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        tmp = self.project / "tmp"
        env.setdefault("FLWR_HOME", str(tmp / "flwr"))
        env.setdefault("RAY_TMPDIR", str(_short_dir(tmp / "ray")))
        # Flower's processes start `flwr-serverapp` & co. by name: this environment's first
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")  # no network call to Flower's servers
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.setdefault("PYTHONUNBUFFERED", "1")
        Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
        return env

    def _write_connection(self) -> None:
        """Add this SuperLink to Flower's configuration, keeping any other connection."""
        path = Path(self.env["FLWR_HOME"]) / "config.toml"
        config = tomli.loads(path.read_text()) if path.exists() else {}
        connection = {"address": f"127.0.0.1:{self.port}"}
        if self.flower.tls is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(self._path(self.flower.tls.ca_certfile))
        config.setdefault("superlink", {})[self.connection] = connection
        path.write_text(tomli_w.dumps(config))

    def _remove_connection(self) -> None:
        path = Path(self.env.get("FLWR_HOME", "")) / "config.toml"
        if self.port is None or not path.is_file():
            return
        config = tomli.loads(path.read_text())
        if config.get("superlink", {}).pop(self.connection, None) is not None:
            path.write_text(tomli_w.dumps(config))

    @property
    def connection(self) -> str:
        """The name of this engine's SuperLink connection for ``flwr``."""
        return f"{CONNECTION}-{self.port}"

    def _tls_args(self) -> list[str]:
        tls = self.flower.tls
        if tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self._path(tls.ca_certfile)),
            "--ssl-certfile",
            str(self._path(tls.certfile)),
            "--ssl-keyfile",
            str(self._path(tls.keyfile)),
        ]

    def _superlink_command(self) -> list[str]:
        cmd = ["flower-superlink", *self._tls_args()]
        if self.flower.runtime == "simulation":
            cmd.append("--simulation")
        return [
            *cmd,
            "--disable-runtime-dependency-installation",
            "--host",
            self.flower.host,
            "--port",
            str(self.port),
        ]

    def _wait_healthy(self) -> None:
        scheme = "http" if self.flower.tls is None else "https"
        verify = True if self.flower.tls is None else str(self._path(self.flower.tls.ca_certfile))
        url = f"{scheme}://127.0.0.1:{self.port}/health"
        deadline = time.monotonic() + self.flower.connect_timeout
        while time.monotonic() < deadline:
            if not self.superlink.alive:
                raise FlowerRunError(
                    f"flower-superlink exited with {self.superlink.proc.returncode}:\n"
                    f"{self.superlink.tail()}"
                )
            try:
                if httpx.get(url, timeout=2.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(_POLL_S)
        raise FlowerRunError(
            f"the SuperLink did not answer on {url} within {self.flower.connect_timeout:.0f} s "
            f"(log: {self.superlink.log_path})"
        )

    def _start_supernodes(self) -> None:
        base = self.flower.supernode_port
        tls = self.flower.tls
        secure = (
            ["--insecure"]
            if tls is None
            else ["--root-certificates", str(self._path(tls.ca_certfile))]
        )
        for k, client in enumerate(self.ids):
            node_config = (
                f'client="{client}" partition-id={k} '
                f'data="{self.client_data / f"{client}.npz"}" '
                f'storage="{self.client_storage / client}"'
            )
            cmd = [
                "flower-supernode",
                *secure,
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(base + k if base else free_port()),
                "--node-config",
                node_config,
            ]
            self.supernodes[client] = self.processes.start(
                f"supernode {client}",
                cmd,
                self.workdir / "logs" / f"supernode-{client}.log",
                self.env,
            )
        log.info("Flower deployment: %d SuperNodes started on loopback", len(self.supernodes))

    # ------------------------------------------------------------------ runs

    def checkpoint(self, method: str) -> Path:
        """The server's checkpoint of ``method`` (clients keep their own state themselves)."""
        fp = config_fingerprint(method, self.cfg, self.clients)
        return self._path(self.cfg.checkpoint_dir) / f"{method}-{fp}-flower.pt"

    def pretrain(
        self, methods: Sequence[str], progress: bool = True
    ) -> Iterator[tuple[str, ModelBundle, list[dict]]]:
        """Pretrain ``methods``: the federated ones in one Flower run, one after the other;
        yields each method's bundle and round records as soon as it is done."""
        federated = [m for m in methods if not PRETRAINING[m].pooled]
        if federated:
            yield from self._flower_run(federated, progress)
        pooled = [m for m in methods if PRETRAINING[m].pooled]
        if pooled:  # pooled data has no clients to federate
            log.info("%s train on pooled data: in this process, not on Flower", pooled)
            yield from InProcessEngine(self.cfg, self.clients).pretrain(pooled, progress)

    def _flower_run(
        self, methods: list[str], progress: bool
    ) -> Iterator[tuple[str, ModelBundle, list[dict]]]:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        files = RunFiles(self.workdir / "runs" / f"{stamp}-{os.getpid()}")
        job = Job(
            methods=methods,
            cfg=self.cfg,
            clients=self.ids,
            fingerprints={m: config_fingerprint(m, self.cfg, self.clients) for m in methods},
            run_dir=files.folder,
            checkpoints={m: str(self.checkpoint(m)) for m in methods},
            client_data=str(self.client_data),
            client_storage=str(self.client_storage),
            audit_dir=self.audit_dir,
        )
        files.folder.mkdir(parents=True, exist_ok=True)
        run_config = files.folder / "run_config.toml"
        run_config.write_text(tomli_w.dumps(job.to_run_config()))
        cmd = ["flwr", "run", str(self.app), self.connection, "--run-config", str(run_config)]
        if self.flower.runtime == "simulation":
            cmd += [
                "--federation-config",
                f"num-supernodes={len(self.ids)} "
                f"client-resources-num-cpus={self.flower.num_cpus} "
                f"client-resources-num-gpus={self.flower.num_gpus}",
            ]
        cmd.append("--stream")
        log.info("Flower %s run of %s (folder %s)", self.flower.runtime, methods, files.folder)
        run = self.processes.start("flwr run", cmd, files.folder / "flower.log", self.env)
        try:
            for method in methods:
                saved = load_checkpoint(
                    job.checkpoint(method), job.fingerprints[method], self.cfg, method
                )
                done = saved["server"].round if saved is not None else 0
                bundle, history = self._follow(method, files, run, done, progress)
                yield method, bundle, history
        finally:
            self.processes.stop([run], grace=5.0)
        self.traffic = self._traffic(run)
        if self.traffic:
            log.info("Flower counted for the run of %s: %s", methods, self.traffic)

    def _follow(
        self, method: str, files: RunFiles, run: Started, done: int, progress: bool
    ) -> tuple[ModelBundle, list[dict]]:
        """Log each finished round of ``method``; return its result, or raise the run's error."""
        total, offset, seen_dead = self.cfg.for_method(method).rounds, 0, set()
        bar = tqdm(total=total, initial=done, desc=f"flower {method}", disable=not progress)
        try:
            while True:
                records, offset = files.read_progress(method, offset)
                for rec in records:
                    self._log_round(rec, total)
                    bar.update()
                result = files.read_result(method)
                if result is not None:
                    return result
                error = files.read_error()
                if error is not None:
                    if error.startswith(NotEnoughClientsError.__name__):
                        raise NotEnoughClientsError(error.split(": ", 1)[1])
                    raise FlowerRunError(f"the Flower run failed: {error}")
                if not run.alive:
                    time.sleep(1.0)  # a last chance for the result to appear
                    if files.read_result(method) is None and files.read_error() is None:
                        raise FlowerRunError(
                            f"{method}: the Flower run ended without a result "
                            f"(log: {run.log_path}):\n{run.tail()}"
                        )
                    continue
                if self.superlink is not None and not self.superlink.alive:
                    raise FlowerRunError(f"the SuperLink died (log: {self.superlink.log_path})")
                self.processes.observe()
                for client, node in self.supernodes.items():
                    if not node.alive and client not in seen_dead:
                        seen_dead.add(client)
                        log.warning("the SuperNode of %s exited (log: %s)", client, node.log_path)
                time.sleep(_POLL_S)
        finally:
            bar.close()

    @staticmethod
    def _log_round(rec: dict, total: int) -> None:
        log.info(
            "%s round %d/%d: mean loss %.4f over %d clients, %.1f s%s%s",
            rec["method"],
            rec["round"] + 1,
            total,
            rec["loss_mean"],
            len(rec["client_losses"]),
            rec["seconds"],
            f"; failed: {', '.join(rec['failed'])}" if rec["failed"] else "",
            f"; missing: {', '.join(rec['missing'])}" if rec["missing"] else "",
        )

    def _traffic(self, run: Started) -> dict | None:
        """Flower's count of the run's network traffic (``flwr ls``), when it has one."""
        found = re.search(r"started run (\d+)", run.tail(100_000))
        if found is None:
            return None
        try:
            out = subprocess.run(
                ["flwr", "ls", self.connection, "--run-id", found.group(1), "--format", "json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            runs = json.loads(out.stdout).get("runs", [])
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
        if not runs:
            return None
        return {"run_id": found.group(1), **runs[0].get("network-traffic", {})}
