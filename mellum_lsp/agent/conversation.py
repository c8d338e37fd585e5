"""Conversations kept by the server: what the engine is sent, and what the transcript shows.

A conversation holds two lists that grow together: `messages`, the OpenAI-shaped messages sent to
the engine's `chat` method (the user's message with its context, the model's answers and tool
calls, tool results), and `entries`, what the Markdown transcript shows (the question without
the bulky context, answers, tool calls, results, edits, notes). Messages are only ever appended,
so each turn's prompt starts with the previous turn's and the engine reuses its KV cache (the
conversation id is the engine's `conversation` key; ids are random, unique across editors that
share one engine). One turn at a time per conversation (`lock`).

Offers `Entry`, `Conversation`, `Conversations` (by id, least recently used dropped past
`capacity`), `ConversationError`, `transcript_uri(id)`, `id_of_uri(uri)`, `SCHEME`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

SCHEME = "mellum-chat"
CAPACITY = 64


class ConversationError(KeyError):
    """An unknown conversation id; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown conversation"


@dataclass
class Entry:
    """One piece of the transcript. Kinds: user, answer, reasoning, call, result, edit, note."""

    kind: str
    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class Conversation:
    id: str
    kind: str = "chat"  # "chat" or "agent"
    title: str = ""
    messages: list[dict] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    turns: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def uri(self) -> str:
        return transcript_uri(self.id)

    def add(self, kind: str, text: str, **meta) -> Entry:
        entry = Entry(kind, text, meta)
        self.entries.append(entry)
        return entry


def transcript_uri(conversation_id: str) -> str:
    return f"{SCHEME}:/{conversation_id}.md"


def id_of_uri(uri: str) -> str | None:
    """The conversation id of a `mellum-chat:/<id>.md` URI; None for any other URI."""
    parsed = urlparse(uri)
    if parsed.scheme != SCHEME:
        return None
    name = unquote(parsed.path).lstrip("/")
    return name[: -len(".md")] if name.endswith(".md") and len(name) > 3 else None


class Conversations:
    """The server's conversations by id."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._by_id: OrderedDict[str, Conversation] = OrderedDict()

    def new(self, kind: str = "chat", title: str = "") -> Conversation:
        conversation = Conversation(uuid.uuid4().hex, kind, title)
        self._by_id[conversation.id] = conversation
        self._evict()
        return conversation

    def get(self, conversation_id: str) -> Conversation:
        conversation = self._by_id.get(conversation_id)
        if conversation is None:
            raise ConversationError(
                f"no conversation {conversation_id!r} (it was reset, or the server restarted); start a new one"
            )
        self._by_id.move_to_end(conversation_id)
        return conversation

    def get_or_new(self, conversation_id: str | None, kind: str = "chat", title: str = "") -> Conversation:
        return self.new(kind, title) if conversation_id is None else self.get(conversation_id)

    def reset(self, conversation_id: str) -> bool:
        """End a conversation; False when there was none."""
        return self._by_id.pop(conversation_id, None) is not None

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def _evict(self) -> None:
        for cid in list(self._by_id):
            if len(self._by_id) <= self.capacity:
                return
            if not self._by_id[cid].lock.locked():  # never drop one that is answering
                del self._by_id[cid]
