"""What every layer of the emulator shares about stored documents: the public view and the fee.

A stored document is a JSON-able dict; keys starting with `_` are the emulator's runtime state and
never leave it. This module sits below `core`, `crowd`, `objects`, `qc` and `tsv`, so that none of
them has to import another to read or present a document.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]

FEE_RATE = 0.3  # platform fee on top of every accepted reward and every bonus
READ_ONLY = {"id", "created", "status", "owner", "last_started", "last_stopped", "last_close_reason", "type"}
REQUEST_FLAGS = {"__item_idx", "allow_defaults", "remaining_overlap"}
OWNER = {"id": "crowdclust-requester", "myself": True, "company_id": "1"}


def public(doc: Doc) -> Doc:
    """A stored document without its private (`_`-prefixed) runtime keys."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def strip_read_only(body: Doc) -> Doc:
    """Drop read-only and request-only keys that exported configs carry (they must not be rejected)."""
    return {
        k: v
        for k, v in body.items()
        if k not in READ_ONLY and k not in REQUEST_FLAGS and not k.startswith("_")
    }


def with_cost(reward: float) -> float:
    """What the requester pays for `reward`: the reward plus the platform fee."""
    return round(float(reward) * (1 + FEE_RATE), 6)
