"""``gateway run --watch``: reload when the config file changes (docs/operations.md).

Polls the file's modification time and size (no inotify dependency; works on every
filesystem, including Kubernetes ConfigMap mounts, whose files are swapped by symlink).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.watch")


def _signature(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)  # follows symlinks: a ConfigMap update changes the target
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_file(path: str, on_change: Callable[[], Awaitable[object]], every: float = 0.5) -> None:
    """Call ``on_change`` each time ``path`` changes (a reload validates the whole file first,
    so a half-written file is refused and the next change is picked up again)."""
    last = _signature(path)
    while True:
        await asyncio.sleep(every)
        current = await asyncio.to_thread(_signature, path)
        if current is None or current == last:
            continue
        # A file written in place is briefly truncated or half-written: wait until it stops
        # changing, so a reload never swaps in an empty (valid, route-less) config.
        while True:
            await asyncio.sleep(every / 2)
            settled = await asyncio.to_thread(_signature, path)
            if settled == current:
                break
            current = settled
        last = current
        log.info("%s changed: reloading", path)
        await on_change()
