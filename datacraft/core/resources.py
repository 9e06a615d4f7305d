"""Resources shared per process: a model, an engine or an index that stages load once and share.

`SHARED.acquire(key, load)` returns the resource for `key`, calling `load()` only the first time
in this process; every `acquire` is paired with a `release`, and the last release closes it
(`close()` or `teardown()` when it has one). Two stages whose `resource_key()` is equal (two
judges on one model, a generator and a reflection stage on one vLLM engine) get one object, so a
fused Beam worker holds one model, not two. Beam-free: the same registry serves a Beam worker,
`run_local` and tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class SharedResources:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # a resource may acquire others while loading (pref_head: its embedders)
        self._items: dict[Hashable, list[Any]] = {}  # key -> [resource, refcount]

    def acquire(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = [load(), 0]
            item[1] += 1
            return item[0]

    def release(self, key: Hashable) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return
            item[1] -= 1
            if item[1] > 0:
                return
            del self._items[key]
        close = getattr(item[0], "close", None) or getattr(item[0], "teardown", None)
        if callable(close):
            close()

    def holders(self, key: Hashable) -> int:
        """How many acquisitions of `key` are open (0: not loaded)."""
        with self._lock:
            item = self._items.get(key)
            return 0 if item is None else item[1]


SHARED = SharedResources()
