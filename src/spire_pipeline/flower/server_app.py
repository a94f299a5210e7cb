"""The Flower ``ServerApp`` of federated pretraining: the server of the ``flower`` engine.

It runs the core's :class:`~spire_pipeline.spire.federated.RoundLoop` (client selection, FedAvg
of the backbone arrays weighted by sample count, round records, checkpoints), with Flower
messages delivering the selected clients' updates, then asks every client for its own tensors
(``query.export``) to build the method's bundle. What it produces goes to the run folder
(:class:`~spire_pipeline.flower.task.RunFiles`), which the engine on the Kedro side reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from spire_pipeline.flower.protocol import EXPORT, HELLO, TRAIN
from spire_pipeline.flower.task import (
    Job,
    RunFiles,
    to_record,
    unflatten_state,
)
from spire_pipeline.spire.config import FlowerConfig
from spire_pipeline.spire.federated import (
    ClientFault,
    ClientState,
    ClientUpdate,
    NotEnoughClientsError,
    RoundLoop,
    ServerState,
    Trainer,
    atomic_save,
    load_checkpoint,
    make_bundle,
)

log = logging.getLogger(__name__)

#: error codes of a reply that never came from the client (it is gone, or too late)
_UNREACHABLE = {
    ErrorCode.NODE_UNAVAILABLE,
    ErrorCode.MESSAGE_UNAVAILABLE,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
}
_POLL_S = 0.2

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Pretrain the job's methods one after the other; write each result, or the error, to the
    run folder."""
    job = Job.from_run_config(context.run_config)
    files = RunFiles(job.run_dir)
    try:
        nodes = ClientNodes(grid, job)
        nodes.connect()
        for method in job.methods:
            files.write_result(*serve(nodes, job, method, files))
    except BaseException as exc:
        files.write_error(exc)
        raise


def serve(nodes: ClientNodes, job: Job, method: str, files: RunFiles):
    """One method's rounds, then its export; returns its bundle and its round records."""
    cfg = job.cfg.for_method(method).model_copy(update={"device": "cpu"})  # it only averages
    trainer = Trainer(method, cfg)
    fingerprint, checkpoint = job.fingerprints[method], job.checkpoint(method)
    server = ServerState(0, trainer.initial_backbone())
    saved = load_checkpoint(checkpoint, fingerprint, cfg, method)
    if saved is not None:
        server = saved["server"]

    def save(s: ServerState) -> None:
        if checkpoint is not None:
            atomic_save({"fingerprint": fingerprint, "server": s, "clients": None}, checkpoint)

    loop = RoundLoop(
        method,
        cfg,
        job.clients,
        trainer.uploaded,
        trainer.spec.federated,
        server,
        save=save,
        on_round=[files.append_progress],
    )
    loop.run(FlowerRounds(nodes, method, trainer.uploaded, server), progress=False)
    if trainer.spec.per_client:
        states = nodes.export(method, server)
    else:
        states = [ClientState()] * len(job.clients)
    return make_bundle(trainer, cfg, job.clients, server, states), server.history


def last_delivered(server: ServerState, client: str) -> int:
    """The last round whose update the server received from ``client`` (``-1``: none)."""
    rounds = [rec["round"] for rec in server.history if client in rec["client_losses"]]
    return max(rounds, default=-1)


class ClientNodes:
    """Which SuperNode serves which client (asked with ``query.hello``), and the messaging."""

    def __init__(self, grid: Grid, job: Job) -> None:
        self.grid, self.job = grid, job
        self.flower: FlowerConfig = job.cfg.flower
        self.node_of: dict[int, int] = {}
        self._asked: set[int] = set()

    def connect(self) -> None:
        """Wait until every client's node is known (or ``connect_timeout``)."""
        deadline = time.monotonic() + self.flower.connect_timeout
        while True:
            self.refresh(max(1.0, deadline - time.monotonic()))
            if len(self.node_of) == len(self.job.clients) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        absent = [c for k, c in enumerate(self.job.clients) if k not in self.node_of]
        if absent:
            needed = min(self.job.cfg.min_clients, len(self.job.clients))
            message = (
                f"{len(self.node_of)} of {len(self.job.clients)} clients connected within "
                f"{self.flower.connect_timeout:.0f} s (absent: {', '.join(absent)})"
            )
            if len(self.node_of) < needed:
                raise NotEnoughClientsError(f"{message}: fewer than min_clients = {needed}")
            log.warning("%s; they count as missing when selected", message)

    def refresh(self, timeout: float) -> None:
        """Ask the nodes not asked yet which client they serve (once: a SuperNode that comes
        back after a restart is a new node)."""
        new = [n for n in self.grid.get_node_ids() if n not in self._asked]
        if not new:
            return
        self._asked.update(new)
        messages = {
            n: Message(
                RecordDict(), dst_node_id=n, message_type=HELLO, group_id="hello", ttl=timeout
            )
            for n in new
        }
        for node, reply in exchange(self.grid, messages, timeout, None).items():
            if reply.has_error():
                log.warning("node %d did not say which client it is: %s", node, reply.error.reason)
                continue
            index = self._index(dict(reply.content["config"]))
            if index is None:
                log.warning("node %d serves no client of this run: %s", node, reply.content)
                continue
            if index in self.node_of:
                log.info("client %s is now served by node %d", self.job.clients[index], node)
            self.node_of[index] = node

    def _index(self, said: Mapping[str, str]) -> int | None:
        if "client" in said:
            return (
                self.job.clients.index(said["client"])
                if said["client"] in self.job.clients
                else None
            )
        if "partition-id" in said and 0 <= int(said["partition-id"]) < len(self.job.clients):
            return int(said["partition-id"])
        return None

    def send(
        self, kind: str, contents: Mapping[int, RecordDict], group: str, straggler: float | None
    ) -> dict[int, Message]:
        """Send one message to each client's node; its replies (absent ones are missing)."""
        ttl = self.flower.round_timeout
        messages = {
            k: Message(
                content, dst_node_id=self.node_of[k], message_type=kind, group_id=group, ttl=ttl
            )
            for k, content in contents.items()
            if k in self.node_of
        }
        by_node = exchange(
            self.grid, {m.metadata.dst_node_id: m for m in messages.values()}, ttl, straggler
        )
        return {
            k: by_node[m.metadata.dst_node_id]
            for k, m in messages.items()
            if m.metadata.dst_node_id in by_node
        }

    def export(self, method: str, server: ServerState) -> list[ClientState]:
        """Every client's own tensors after its last delivered round."""
        ids = self.job.clients
        self.refresh(self.flower.straggler_timeout or self.flower.round_timeout)
        contents = {
            k: RecordDict(
                {
                    "config": ConfigRecord(
                        {"method": method, "index": k, "after-round": last_delivered(server, c)}
                    )
                }
            )
            for k, c in enumerate(ids)
        }
        replies = self.send(EXPORT, contents, f"{method}.export", None)
        absent = [c for k, c in enumerate(ids) if k not in replies or not replies[k].has_content()]
        if absent:
            reasons = {ids[k]: r.error.reason for k, r in replies.items() if r.has_error()}
            raise RuntimeError(
                f"{method}: {', '.join(absent)} did not send their own tensors after the "
                f"last round ({reasons or 'no reply'}); the bundle needs them. Bring their "
                "SuperNodes back and run the same command: training is finished and saved, only "
                "the export is redone."
            )
        return [
            unflatten_state(replies[k].content["arrays"].to_torch_state_dict())
            for k in range(len(ids))
        ]


class FlowerRounds:
    """An engine's round for :class:`RoundLoop`: train messages out, updates back."""

    def __init__(
        self, nodes: ClientNodes, method: str, uploaded: list[str], server: ServerState
    ) -> None:
        self.nodes, self.method, self.uploaded, self.server = nodes, method, uploaded, server

    def __call__(
        self, r: int, selected: list[int], backbone: dict[str, torch.Tensor]
    ) -> Iterator[tuple[int, ClientUpdate | ClientFault]]:
        nodes, ids = self.nodes, self.nodes.job.clients
        if any(k not in nodes.node_of for k in selected):
            nodes.refresh(nodes.flower.straggler_timeout or nodes.flower.round_timeout)
        arrays = to_record({n: backbone[n] for n in self.uploaded})
        contents = {
            k: RecordDict(
                {
                    "arrays": arrays,
                    "config": ConfigRecord(
                        {
                            "method": self.method,
                            "round": r,
                            "index": k,
                            "after-round": last_delivered(self.server, ids[k]),
                        }
                    ),
                }
            )
            for k in selected
        }
        group = f"{self.method}.{r}"
        replies = nodes.send(TRAIN, contents, group, nodes.flower.straggler_timeout)
        for k in selected:
            yield k, self._outcome(ids[k], k in nodes.node_of, replies.get(k))

    @staticmethod
    def _outcome(client: str, connected: bool, reply: Message | None):
        if not connected:
            return ClientFault("missing", "no SuperNode of this client is connected")
        if reply is None:
            return ClientFault("missing", "no reply in time (round_timeout, straggler_timeout)")
        if reply.has_error():
            kind = "missing" if reply.error.code in _UNREACHABLE else "failed"
            return ClientFault(kind, f"client {client}: {reply.error.reason}")
        content = reply.content
        metrics = content["metrics"]
        if "failed" in metrics:
            return ClientFault("failed", str(content["config"]["reason"]))
        return ClientUpdate(
            upload=content["arrays"].to_torch_state_dict(),
            num_samples=int(metrics["num-examples"]),
            loss=float(metrics["loss"]),
        )


def exchange(
    grid: Grid, messages: Mapping[int, Message], timeout: float, straggler: float | None
) -> dict[int, Message]:
    """Push ``messages`` (keyed by anything) and pull their replies until all are in or
    ``timeout`` seconds have passed; once a client has answered, wait for the others at most
    ``straggler`` seconds, or as long as that first answer took if that is longer (a loaded
    machine slows every client alike). The SuperLink's replies for nodes it knows to be gone
    are no answers."""
    keys = list(messages)
    start = time.monotonic()
    ids = list(grid.push_messages([messages[k] for k in keys]))
    pending = {mid: k for k, mid in zip(keys, ids) if mid}
    replies: dict[int, Message] = {}
    deadline, answered = start + timeout, False
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            key = pending.pop(reply.metadata.reply_to_message_id, None)
            if key is None:
                continue
            replies[key] = reply
            gone = reply.has_error() and reply.error.code in _UNREACHABLE
            if straggler is not None and not answered and not gone:
                answered, now = True, time.monotonic()
                deadline = min(deadline, now + max(straggler, now - start))
        if pending:
            time.sleep(_POLL_S)
    return replies
