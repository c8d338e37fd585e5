"""What one engine connection holds of this server's inputs, and the request that relies on it.

The engine keeps context chunk texts by key and each document's last text by version
(``engine.inputs``), so a keystroke sends O(change): the chunks' keys and the one edit between the
text the engine holds and the text now. ``Held`` remembers what was sent on this connection;
``forget_chunks`` / ``forget_documents`` are the recovery when the engine answers that it does
not hold something (after a restart or an eviction), and a new connection starts empty.

Pure. Offers ``one_edit``, ``Held``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

MAX_DOCUMENTS = 256  # as many as the engine keeps (engine.inputs)


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix, by halving (slice comparisons run at C speed)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid : len(a) - lo] == b[len(b) - mid : len(b) - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def one_edit(old: str, new: str) -> tuple[int, int, str]:
    """The single replacement ``(start, end, text)`` of ``old[start:end]`` that turns ``old`` into
    ``new``: whatever lies between their common prefix and common suffix."""
    start = _common_prefix(old, new)
    tail = _common_suffix(old, new, min(len(old), len(new)) - start)
    return start, len(old) - tail, new[start : len(new) - tail]


class Held:
    def __init__(self) -> None:
        self.chunk_keys: set[str] = set()
        self.context_refs: set[str] = set()
        self._docs: OrderedDict[str, tuple[int, str]] = OrderedDict()  # document -> (version, text)
        self._versions = 0

    def forget_chunks(self) -> None:
        self.chunk_keys.clear()
        self.context_refs.clear()

    def forget_documents(self) -> None:
        self._docs.clear()

    def context(self, chunks: Any) -> dict:
        """``context`` (and ``context_ref``) as sent: a list sent before goes by its ref alone;
        otherwise each chunk by key, with its text only if this connection has not sent it."""
        if not chunks:
            return {"context": []}
        ref = hashlib.sha1("\0".join(f"{c.path}\0{c.key}" for c in chunks).encode()).hexdigest()[:20]
        if ref in self.context_refs:
            return {"context_ref": ref}
        self.context_refs.add(ref)
        return {"context": self._chunks(chunks), "context_ref": ref}

    def _chunks(self, chunks: Any) -> list[dict]:
        out = []
        for c in chunks:
            item = {"path": c.path, "key": c.key}
            if c.key not in self.chunk_keys:
                item["text"] = c.text
                self.chunk_keys.add(c.key)
            out.append(item)
        return out

    def document(self, document: str, text: str) -> dict:
        """``doc`` for ``document`` now reading ``text``: an edit of the version this connection
        sent last, or the full text. The engine holds it once the request is read."""
        held = self._docs.get(document)
        if held is not None and held[1] == text:
            self._docs.move_to_end(document)
            return {"version": held[0], "base": held[0]}
        self._versions += 1
        version = self._versions
        self._docs[document] = (version, text)
        self._docs.move_to_end(document)
        while len(self._docs) > MAX_DOCUMENTS:
            self._docs.popitem(last=False)
        if held is None:
            return {"version": version, "text": text}
        return {"version": version, "base": held[0], "edit": list(one_edit(held[1], text))}
