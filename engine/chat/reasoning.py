"""The reasoning trace of Thinking models, split from the answer while it streams.

Offers ``ReasoningMarkers`` (``<think>`` / ``</think>`` by default), ``ReasoningSplitter`` (feed
decoded text pieces, get ``("reasoning", text)`` and ``("content", text)`` events),
``split_reasoning`` (the same for a whole text), ``partial_marker`` (how much of a streamed
text to hold back), ``opens_reasoning`` (does a rendered prompt
already open the trace?) and ``drop_reasoning`` (earlier turns without their reasoning).

Rules: a trace is recognised only at the start of the answer (leading whitespace allowed), so a
``<think>`` later in an answer stays content; whitespace right after a marker is dropped; a trace
the model never closes is reasoning to the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

REASONING = "reasoning"
CONTENT = "content"
Event = tuple[str, str]  # (REASONING | CONTENT, text)


@dataclass(frozen=True)
class ReasoningMarkers:
    start: str = "<think>"
    end: str = "</think>"

    def __post_init__(self) -> None:
        if not self.start or not self.end or self.start == self.end:
            raise ValueError(
                f"reasoning markers must be two different non-empty strings, got {self.start!r} and {self.end!r}"
            )


def partial_marker(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker`` (to hold back)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Streaming splitter; ``in_reasoning=True`` when the prompt already opened the trace."""

    _BEFORE, _REASONING, _CONTENT = "before", "reasoning", "content"

    def __init__(self, markers: ReasoningMarkers = ReasoningMarkers(), *, in_reasoning: bool = False) -> None:
        self.markers = markers
        self._state = self._REASONING if in_reasoning else self._BEFORE
        self._held = ""  # text not yet emitted: a possible marker start, or whitespace after a marker
        self._skip_space = in_reasoning

    @property
    def in_reasoning(self) -> bool:
        return self._state == self._REASONING

    def feed(self, text: str) -> list[Event]:
        """Events for ``text`` (merged per channel); text that may start a marker is held back."""
        out: list[Event] = []
        buf = self._held + text
        self._held = ""
        while buf:
            if self._skip_space:
                stripped = buf.lstrip()
                if not stripped:
                    return out  # all whitespace: keep dropping it
                buf, self._skip_space = stripped, False
            if self._state == self._BEFORE:
                head = buf.lstrip()
                if head.startswith(self.markers.start):
                    buf = head[len(self.markers.start) :]
                    self._state, self._skip_space = self._REASONING, True
                elif self.markers.start.startswith(head):  # whitespace or a start of the marker so far
                    self._held = buf
                    return out
                else:
                    self._state = self._CONTENT
            elif self._state == self._REASONING:
                at = buf.find(self.markers.end)
                if at >= 0:
                    _emit(out, REASONING, buf[:at])
                    buf = buf[at + len(self.markers.end) :]
                    self._state, self._skip_space = self._CONTENT, True
                else:
                    keep = partial_marker(buf, self.markers.end)
                    _emit(out, REASONING, buf[: len(buf) - keep])
                    self._held = buf[len(buf) - keep :]
                    return out
            else:
                _emit(out, CONTENT, buf)
                return out
        return out

    def flush(self) -> list[Event]:
        """Events for whatever is held back, at the end of the stream."""
        held, self._held = self._held, ""
        if not held or self._skip_space:
            return []
        return [(REASONING if self._state == self._REASONING else CONTENT, held)]


def _emit(out: list[Event], channel: str, text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == channel:
        out[-1] = (channel, out[-1][1] + text)
    else:
        out.append((channel, text))


def split_reasoning(
    text: str, markers: ReasoningMarkers = ReasoningMarkers(), *, in_reasoning: bool = False
) -> tuple[str, str]:
    """``(reasoning, content)`` of a whole answer."""
    splitter = ReasoningSplitter(markers, in_reasoning=in_reasoning)
    parts = {REASONING: "", CONTENT: ""}
    for channel, piece in splitter.feed(text) + splitter.flush():
        parts[channel] += piece
    return parts[REASONING], parts[CONTENT]


def opens_reasoning(prompt: str, markers: ReasoningMarkers = ReasoningMarkers()) -> bool:
    """Whether a rendered prompt ends inside a trace (its generation prompt opened ``<think>``)."""
    return prompt.rstrip().endswith(markers.start)


def drop_reasoning(
    messages: Sequence[Mapping], *, keep: bool, markers: ReasoningMarkers = ReasoningMarkers()
) -> list[dict]:
    """Messages for the next turn: unless ``keep`` (the template reads ``reasoning_content``, see
    ``ChatTemplate.keeps_reasoning``), assistant turns lose ``reasoning_content`` and a leading
    trace inside their ``content``."""
    out = []
    for message in messages:
        m = dict(message)
        if not keep and m.get("role") == "assistant":
            m.pop("reasoning_content", None)
            m.pop("reasoning", None)
            if isinstance(m.get("content"), str):
                _, m["content"] = split_reasoning(m["content"], markers)
        out.append(m)
    return out
