"""State: in-memory dictionaries, written behind to SQLite.

Every object (projects, pools, trainings, skills, tasks, suites, assignments, operations, user skills,
worker state, counters) is a JSON document in `data[kind][id]`. Mutations mark the document dirty;
`flush()` writes the dirty documents in one transaction (after every request and every simulation
step). With `path=None` nothing is written (tests). A restarted emulator loads everything back, so it
continues with every object, the crowd's progress, the clock and the balance.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from bisect import bisect_right
from collections import defaultdict
from typing import Any

KINDS = (
    "project",
    "pool",  # pools and trainings: one id space (`_kind` says which)
    "skill",
    "task",
    "suite",
    "assignment",
    "operation",
    "oplog",
    "user_skill",
    "user_restriction",
    "user_bonus",
    "aggregate",  # results of aggregate-by-pool operations
    "worker",
    "meta",
)
# Kinds whose documents are indexed by pool (`pool_id`), in id order.
POOL_INDEXED = ("task", "suite", "assignment")

Doc = dict[str, Any]


class Store:
    """All emulator state, guarded by one re-entrant lock (`store.lock`)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.data: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        self.by_pool: dict[str, dict[str, list[str]]] = {kind: defaultdict(list) for kind in POOL_INDEXED}
        self._dirty: set[tuple[str, str]] = set()
        self._db: sqlite3.Connection | None = None
        if path:
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS objects (kind TEXT, id TEXT, data TEXT, PRIMARY KEY (kind, id))"
            )
            self._load()

    # ------------------------------------------------------------------------------------------ access
    def get(self, kind: str, key: str) -> Doc | None:
        return self.data[kind].get(key)

    def put(self, kind: str, key: str, doc: Doc) -> Doc:
        """Insert or replace a document (new pool-indexed documents must come in id order)."""
        fresh = key not in self.data[kind]
        self.data[kind][key] = doc
        if fresh and kind in POOL_INDEXED:
            self.by_pool[kind][str(doc.get("pool_id"))].append(key)
        self._dirty.add((kind, key))
        return doc

    def delete(self, kind: str, key: str) -> None:
        """Remove a document (never one of the pool-indexed kinds)."""
        if self.data[kind].pop(key, None) is not None:
            self._dirty.add((kind, key))

    def touch(self, kind: str, key: str) -> None:
        """Mark a document changed in place."""
        self._dirty.add((kind, key))

    def ids_in_pool(self, kind: str, pool_id: str, after: str | None = None) -> list[str]:
        """Ids of a pool's documents in id order, optionally only those > `after`."""
        ids = self.by_pool[kind].get(str(pool_id), [])
        return ids[bisect_right(ids, after) :] if after is not None else ids

    def meta(self, key: str, default: Any = None) -> Any:
        doc = self.data["meta"].get(key)
        return default if doc is None else doc["value"]

    def set_meta(self, key: str, value: Any) -> None:
        self.put("meta", key, {"value": value})

    def next_seq(self, name: str) -> int:
        """Next value of a named counter (ids); persisted with everything else."""
        value = int(self.meta(f"seq:{name}", 0)) + 1
        self.set_meta(f"seq:{name}", value)
        return value

    # ------------------------------------------------------------------------------------- persistence
    def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        if self._db is None:
            return
        rows = [
            (kind, key, json.dumps(self.data[kind][key])) for kind, key in dirty if key in self.data[kind]
        ]
        gone = [(kind, key) for kind, key in dirty if key not in self.data[kind]]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)", rows)
            self._db.executemany("DELETE FROM objects WHERE kind = ? AND id = ?", gone)

    def _load(self) -> None:
        assert self._db is not None
        for kind, key, text in self._db.execute("SELECT kind, id, data FROM objects ORDER BY kind, id"):
            if kind in self.data:
                self.data[kind][key] = json.loads(text)
        for kind in POOL_INDEXED:
            for key in sorted(self.data[kind]):
                self.by_pool[kind][str(self.data[kind][key].get("pool_id"))].append(key)

    def close(self) -> None:
        with self.lock:
            self.flush()
            if self._db is not None:
                self._db.close()
                self._db = None
