"""Bounded caches of the service: uploaded files (on disk, keyed by content) and scoring results.

An upload is kept under its SHA-256 so that the viewer can show it after it was scored: the same bytes
uploaded twice are stored once, and the least recently used files are removed when the store would
exceed its byte budget. Scoring results (the JSON and the overlay PNGs) are kept in memory, also by
least recent use within a byte budget, so that toggling a layer never scores a slide again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

DIGEST = re.compile(r"[0-9a-f]{64}")


class UploadStore:
    """Uploaded files in a private temporary folder, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int, root: str | Path | None = None) -> None:
        self.max_bytes = max_bytes
        self._owned = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="her2score-uploads-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, path: Path) -> str | None:
        """Move the file at ``path`` into the store; its digest, or None when it alone exceeds the budget."""
        digest = _sha256(path)
        size = path.stat().st_size
        if size > self.max_bytes:
            return None
        with self._lock:
            if digest in self._sizes:
                self._sizes.move_to_end(digest)
                return digest
            shutil.move(path, self.root / digest)  # a rename when both are on one file system
            self._sizes[digest] = size
            while sum(self._sizes.values()) > self.max_bytes:
                old, _ = self._sizes.popitem(last=False)
                (self.root / old).unlink(missing_ok=True)
        return digest

    def path(self, digest: str) -> Path | None:
        """The stored file of ``digest``, or None (also for anything that is not a digest)."""
        if not DIGEST.fullmatch(digest):
            return None
        with self._lock:
            if digest not in self._sizes:
                return None
            self._sizes.move_to_end(digest)
        return self.root / digest

    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


class ResultCache:
    """Scoring results by key, least recently used first out, at most ``max_bytes`` of overlay images."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[dict[str, Any], dict[str, bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: tuple, body: dict[str, Any], images: dict[str, bytes]) -> None:
        with self._lock:
            self._items[key] = (body, images)
            self._items.move_to_end(key)
            while len(self._items) > 1 and self._bytes() > self.max_bytes:
                self._items.popitem(last=False)

    def _bytes(self) -> int:
        return sum(len(b) for _, images in self._items.values() for b in images.values())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
