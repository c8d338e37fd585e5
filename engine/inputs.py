"""What the engine remembers of its clients' inputs, so a keystroke costs O(change) on the wire.

- Context chunk texts by key: a client sends a chunk's text once and its key afterwards; and
  whole context lists by ``context_ref``: a list sent with a ref is named by the ref afterwards.
- Each document's last text by version: a client sends the edit since a version the engine
  holds (or the full text when it holds none, e.g. after a restart) and the cursor offset.

``Inputs.resolve(params)`` gives the same params with every chunk's text and the document's
``prefix``/``suffix`` filled in, so the executors (local or remote) see complete requests. What it
does not hold is answered with UNKNOWN_CONTEXT_KEY / UNKNOWN_DOCUMENT; both stores are LRU-bounded.
Runs on the event loop. Offers ``Inputs``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from .protocol import CompleteParams, ContextChunk, ErrorCode, PrefillParams, ProtocolError, chunk_key


class _Bounded(OrderedDict):
    """An LRU map bounded by entries and by the total length of its string values."""

    def __init__(self, entries: int, chars: int) -> None:
        super().__init__()
        self.entries, self.chars, self.size = entries, chars, 0

    def put(self, key: Any, value: Any, length: int) -> None:
        if key in self:
            self.size -= self.pop(key)[1]
        OrderedDict.__setitem__(self, key, (value, length))
        self.size += length
        while len(self) > 1 and (len(self) > self.entries or self.size > self.chars):
            self.size -= self.popitem(last=False)[1][1]

    def take(self, key: Any) -> Any:
        """The value of ``key`` (now the most recent), or None."""
        item = self.get(key)
        if item is None:
            return None
        self.move_to_end(key)
        return item[0]


class Inputs:
    def __init__(self, chunk_entries: int = 4096, documents: int = 256, chars: int = 64 * 2**20) -> None:
        self._chunks = _Bounded(chunk_entries, chars)  # key -> text
        self._docs = _Bounded(documents, chars)  # document -> (version, text)
        self._lists = _Bounded(documents, 2**40)  # context_ref -> the chunks (keys and paths)

    def resolve(self, p: Any) -> Any:
        if not isinstance(p, CompleteParams | PrefillParams):
            return p
        changes: dict[str, Any] = {}
        context = p.context
        if p.context_ref is not None:
            if context:
                self._lists.put(p.context_ref, tuple((c.path, chunk_key(c)) for c in context), len(context))
            else:
                listed = self._lists.take(p.context_ref)
                if listed is None:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_CONTEXT_KEY,
                        f"unknown context_ref {p.context_ref!r}; send its chunks",
                    )
                context = tuple(ContextChunk(path, None, key) for path, key in listed)
            changes["context_ref"] = None
        if context:
            changes["context"] = tuple(self._chunk(c) for c in context)
        if p.doc is not None:
            text = self._document(p.document, p.doc)
            if p.offset > len(text):
                raise ProtocolError(
                    ErrorCode.INVALID_PARAMS,
                    f"offset {p.offset} is past the end of {p.document!r} (version {p.doc.version}: "
                    f"{len(text)} characters)",
                )
            changes |= {"prefix": text[: p.offset], "suffix": text[p.offset :], "doc": None, "offset": None}
        return dataclasses.replace(p, **changes) if changes else p

    def _chunk(self, c: ContextChunk) -> ContextChunk:
        key = chunk_key(c)
        if c.text is not None:
            self._chunks.put(key, c.text, len(c.text))
            return c if c.key is not None else dataclasses.replace(c, key=key)
        text = self._chunks.take(key)
        if text is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_CONTEXT_KEY,
                f"unknown context key {key!r} ({c.path}); send it with its text",
            )
        return dataclasses.replace(c, text=text)

    def _document(self, document: str, d: Any) -> str:
        if d.text is not None:
            text = d.text
        else:
            held = self._docs.take(document)
            if held is None or held[0] != d.base:
                have = "no version" if held is None else f"version {held[0]}"
                raise ProtocolError(
                    ErrorCode.UNKNOWN_DOCUMENT,
                    f"{document!r}: the engine holds {have}, not base {d.base}; send the full text",
                )
            text = held[1]
            if d.edit is not None:
                start, end, new = d.edit
                if end > len(text):
                    raise ProtocolError(
                        ErrorCode.INVALID_PARAMS,
                        f"{document!r}: edit [{start}, {end}) is past the end of version {d.base} "
                        f"({len(text)} characters)",
                    )
                text = text[:start] + new + text[end:]
        self._docs.put(document, (d.version, text), len(text))
        return text
