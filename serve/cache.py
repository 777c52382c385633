"""LRU cache of encoded images with a byte budget.

(model, version, the version's files, seed, class_label, encoding, truncation, style mix)
fully determines an image, so a hit is exactly what the engine would have produced; a reload
that replaced a version's files makes its old entries unreachable (they age out). Used only
from the event loop: no lock.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable

from ganserve.serve.metrics import ServerMetrics

# Per-entry bookkeeping (key tuple, dict slot, bytes object header), so many tiny images
# cannot exceed the budget through overhead alone.
ENTRY_OVERHEAD_BYTES = 200


class ResponseCache:
    """Least-recently-used image bytes, evicted once their total passes ``budget_bytes``."""

    def __init__(self, budget_bytes: int, metrics: ServerMetrics) -> None:
        self.budget = budget_bytes
        self._entries: collections.OrderedDict[Hashable, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._metrics = metrics

    def get(self, key: Hashable) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: bytes) -> None:
        cost = len(value) + ENTRY_OVERHEAD_BYTES
        if cost > self.budget:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old) + ENTRY_OVERHEAD_BYTES
        self._entries[key] = value
        self._bytes += cost
        while self._bytes > self.budget:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted) + ENTRY_OVERHEAD_BYTES
        self._metrics.cache_bytes.set(self._bytes)
        self._metrics.cache_entries.set(len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes
