"""Nodes of ``diffusers_export``: thin wrappers over :mod:`spire_pipeline.spire.export`."""

from __future__ import annotations

import logging
from typing import Any

from spire_pipeline.spire.config import ExportConfig
from spire_pipeline.spire.export import DiffusersExport, to_diffusers
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def export_diffusers(
    pretrained_models: dict, personal_embeddings: dict, params: dict[str, Any]
) -> DiffusersExport:
    """The newest pretrained model of ``diffusers_export.method`` with its clients' embeddings."""
    cfg = validate_params(ExportConfig, params, "diffusers_export")
    if cfg.method not in pretrained_models:
        raise KeyError(
            f"no pretrained {cfg.method!r} model among the newest ({sorted(pretrained_models)})"
        )
    loaded = pretrained_models[cfg.method]
    bundle = loaded() if callable(loaded) else loaded
    export = to_diffusers(bundle, personal_embeddings if cfg.personal else None)
    kinds = export.info["clients"]
    log.info(
        "Exporting %s (backbone %s) with %d seen and %d personal client embeddings",
        cfg.method,
        export.info["backbone_sha"],
        sum(k == "seen" for k in kinds.values()),
        sum(k == "personal" for k in kinds.values()),
    )
    return export
