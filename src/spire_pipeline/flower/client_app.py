"""The Flower ``ClientApp`` of federated pretraining: one client of the ``flower`` engine.

Messages it answers:

- ``query.hello``: which client it is (from its SuperNode's node config);
- ``train``: one round of local training with :meth:`Trainer.train` (the core's one local
  training step) from the server's backbone; it sends back the backbone arrays the method
  shares, its sample count and its loss, and keeps its own tensors (embedding, head, model)
  to itself (:class:`~spire_pipeline.flower.task.ClientStore`);
- ``query.export``: after the last round, its own tensors, for the method's bundle.

The heavy imports (torch, diffusers) happen only when a message needs them (``train``, or an
``export`` of tensors the client does not hold in its ``Context.state``): Flower's deployment
runtime starts a new ``flwr-clientapp`` process for every message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from spire_pipeline.flower.protocol import held_state


def _describe(msg: Message) -> dict:
    """What a message carries: per record its kind and, per entry, its type, shape and size."""
    if not msg.has_content():
        return {"error": str(msg.error.reason) if msg.has_error() else None, "records": {}}
    records: dict[str, dict] = {}
    for name, record in msg.content.items():
        entries = {}
        for key, value in record.items():
            if hasattr(value, "shape"):  # an Array
                entries[key] = {
                    "type": "array",
                    "dtype": str(value.dtype),
                    "shape": list(value.shape),
                    "bytes": len(value.data),
                }
            else:
                entries[key] = {"type": type(value).__name__, "value": value}
        records[name] = {"kind": type(record).__name__, "entries": entries}
    return {"error": None, "records": records}


def audit_mod(msg: Message, context: Context, call_next) -> Message:
    """Describe every message this client sends in ``<audit-dir>/<node>.jsonl`` (when the
    run config sets ``audit-dir``; the privacy tests read it)."""
    reply = call_next(msg, context)
    folder = str(context.run_config.get("audit-dir", ""))
    if folder:
        node = context.node_config.get("client", context.node_config.get("partition-id", "x"))
        line = {
            "node": str(node),
            "received": msg.metadata.message_type,
            "round": msg.metadata.group_id,
            "time": time.time(),
            **_describe(reply),
        }
        path = Path(folder) / f"{node}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")
    return reply


app = ClientApp(mods=[audit_mod])


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Say which client this is (the server maps its node to a client index)."""
    keys = ("client", "partition-id")
    found = {k: str(context.node_config[k]) for k in keys if k in context.node_config}
    return Message(RecordDict({"config": ConfigRecord(found)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training; the reply holds only shared arrays and scalars."""
    from spire_pipeline.flower.task import ClientStore, load_client_data, to_record
    from spire_pipeline.spire.federated import training_fault

    job, site, method, trainer = _setup(msg, context)
    config = msg.content["config"]
    round_idx, after_round = int(config["round"]), int(config["after-round"])
    store = ClientStore(job, site, method)
    state = store.load(context, after_round, trainer)
    backbone = msg.content["arrays"].to_torch_state_dict()
    try:
        update, new_state = trainer.train(
            backbone, load_client_data(site), state, round_idx, site.index
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a NaN loss: the server drops this update
        reason = training_fault(site.client, exc).reason
        content = RecordDict(
            {"metrics": MetricRecord({"failed": 1}), "config": ConfigRecord({"reason": reason})}
        )
        return Message(content, reply_to=msg)
    store.save(context, new_state, round_idx, after_round)
    metrics = MetricRecord({"num-examples": update.num_samples, "loss": update.loss})
    content = RecordDict({"arrays": to_record(update.upload), "metrics": metrics})
    return Message(content, reply_to=msg)


@app.query("export")
def export(msg: Message, context: Context) -> Message:
    """After the last round: this client's own tensors, for the method's bundle."""
    config = msg.content["config"]
    held = held_state(context, str(config["method"]), int(config["after-round"]))
    if held is None:  # a new run (a rerun) or one it never trained in: from its own folder
        from spire_pipeline.flower.task import ClientStore, flatten_state, to_record

        job, site, method, trainer = _setup(msg, context)
        state = ClientStore(job, site, method).load(context, int(config["after-round"]), trainer)
        held = to_record(flatten_state(state))
    return Message(RecordDict({"arrays": held}), reply_to=msg)


def _setup(msg: Message, context: Context):
    """The run's job, which client this is, the message's method and its trainer."""
    from spire_pipeline.flower.task import ClientSite, Job, trainer_for

    job = Job.from_run_config(context.run_config)
    site = ClientSite.of(job, context.node_config)
    sent_to = int(msg.content["config"]["index"])
    if sent_to != site.index:
        raise ValueError(
            f"this ClientApp serves client {site.client} (index {site.index}), "
            f"but the message is for index {sent_to}"
        )
    method = str(msg.content["config"]["method"])
    if method not in job.methods:
        raise ValueError(f"method {method!r} is not one of this run's {job.methods}")
    return job, site, method, trainer_for(job, method)
