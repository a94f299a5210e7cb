"""The names the two apps agree on (no torch here: a ``ClientApp`` that only says hello or
hands over what it already holds stays cheap).

Messages (Flower category ``train`` or ``query``, with an action):

===================  ===========================================  ==============================
message              server sends                                 client replies
===================  ===========================================  ==============================
``query.hello``      nothing                                      ``config``: its ``client`` or
                                                                  ``partition-id``
``train``            ``arrays`` (the shared backbone arrays),     ``arrays`` (its shared arrays),
                     ``config`` (method, round, index,            ``metrics`` (``num-examples``,
                     after-round)                                 ``loss``), or ``failed`` and a
                                                                  ``reason``
``query.export``     ``config`` (method, index, after-round)      ``arrays``: its own tensors
===================  ===========================================  ==============================
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, Context

HELLO, TRAIN, EXPORT = "query.hello", "train", "query.export"
#: what a client keeps in its ``Context.state`` between rounds: its own tensors, and after
#: which round of which method (and parameters) they are
STATE_ARRAYS, STATE_META = "spire.state", "spire.state_meta"


def state_meta(method: str, fingerprint: str, round_idx: int) -> dict:
    return {"method": method, "fingerprint": fingerprint, "round": round_idx}


def held_state(context: Context, method: str, after_round: int) -> ArrayRecord | None:
    """The client's own tensors after ``after_round`` if its ``Context.state`` holds them."""
    meta = context.state.config_records.get(STATE_META)
    fingerprint = json.loads(str(context.run_config.get("fingerprints", "{}"))).get(method)
    if meta is None or dict(meta) != state_meta(method, str(fingerprint), after_round):
        return None
    return context.state.array_records[STATE_ARRAYS]
