"""A chat turn on a local model: the one place that turns a ``chat`` job into tokens and back.

1. The prompt: the model folder's chat template (``engine.chat.template``) renders the messages
   and tools; the reasoning of earlier assistant turns is dropped unless the template reads it.
2. Reuse: the conversation id keys the prefix cache, so turn N+1 prefills only what turn N did
   not already hold (its answer is in the cache from decoding it). For that the prompt of turn
   N+1 starts with turn N's exact ids — its prompt and the tokens it generated — whenever its
   text starts with theirs: re-tokenising the answer would give other ids and lose the cache.
3. Decoding: under a constraint when the request asks for one (``tool_choice`` required/named, a
   ``response_format``, or a Lark ``grammar``), speculation included (``engine.speculative``).
4. The answer: a Thinking model's reasoning is split off as its own channel (streamed as
   ``{"reasoning": ...}`` partials, content as ``{"text": ...}``) and tool calls are parsed out of
   the content as OpenAI ``tool_calls``.

Offers ``ChatModel`` (what a folder says about chatting) and ``run_chat(engine, job)``.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chat.constrain import Constraint, constraint_for, validate_response_format
from .chat.reasoning import (
    CONTENT,
    REASONING,
    ReasoningMarkers,
    ReasoningSplitter,
    drop_reasoning,
    opens_reasoning,
)
from .chat.template import ChatTemplate, ChatTemplateError
from .chat.tools import FieldError, ToolCallFormat, ToolCallParser, validate_tool_choice, validate_tools
from .jobs import Job, request_record
from .protocol import ChatParams, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from .service import Engine

MAX_CONVERSATIONS = 256  # conversations whose last turn's ids are kept
REASONING_KEY = "mellum_reasoning"  # tokenizer_config.json: {"start": "<think>", "end": "</think>"}


@dataclass
class ChatModel:
    """What a model folder says about chatting: its template, tool-call format, reasoning markers."""

    template: ChatTemplate
    tool_format: ToolCallFormat
    markers: ReasoningMarkers
    turns: OrderedDict = field(default_factory=OrderedDict)  # conversation -> (text, ids) of its last turn

    def remember(self, conversation: str, text: str, ids: list[int]) -> None:
        self.turns[conversation] = (text, ids)
        self.turns.move_to_end(conversation)
        while len(self.turns) > MAX_CONVERSATIONS:
            self.turns.popitem(last=False)

    @classmethod
    def from_folder(cls, model_dir: str | Path) -> ChatModel:
        folder = Path(model_dir)
        try:
            template = ChatTemplate.from_folder(folder)
        except ChatTemplateError as e:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"this model cannot chat: {e}") from None
        markers = ReasoningMarkers()
        config = folder / "tokenizer_config.json"
        if config.is_file():
            entry = json.loads(config.read_text(encoding="utf-8")).get(REASONING_KEY)
            if isinstance(entry, dict):
                markers = ReasoningMarkers(**entry)
        return cls(template, ToolCallFormat.from_folder(folder), markers)


def _invalid(e: Exception) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PARAMS, f"chat: {e}")


def _prompt_ids(
    engine: Engine, chat: ChatModel, p: ChatParams, text: str, messages: list, tools: list
) -> list[int]:
    """The prompt's ids: the conversation's last turn's exact ids and the new text's, when the
    text continues that turn's and carries no special-token text of its own; else all encoded."""
    held = chat.turns.get(p.conversation) if p.conversation else None
    if held is not None and text.startswith(held[0]):
        specials = engine.special_texts()
        strings = json.dumps([messages, tools], ensure_ascii=False)
        if not any(t in strings for t in specials):
            return held[1] + engine.tok.encode(text[len(held[0]) :], allow_special=True)
    return chat.template.encode(engine.tok, messages, tools=tools or None)


def prepare(engine: Engine, p: ChatParams) -> tuple[list[int], str, Constraint | None, bool, list[str]]:
    """(prompt ids, prompt text, constraint, whether the prompt opened the reasoning, tool names)."""
    chat = engine.chat_model()
    try:
        tools = validate_tools(list(p.tools)) if p.tools else []
        choice = validate_tool_choice(p.tool_choice, tools)
        response_format = validate_response_format(p.response_format)
        messages = drop_reasoning(p.messages, keep=chat.template.keeps_reasoning, markers=chat.markers)
        text = chat.template.render(messages, tools=tools or None)
        ids = _prompt_ids(engine, chat, p, text, messages, tools)
        vocab = engine.backend.config.vocab_size
        if p.grammar is not None:
            constraint = Constraint.lark(engine.tok, p.grammar, vocab_size=vocab)
        else:
            constraint = constraint_for(engine.tok, tools=tools, tool_choice=choice, response_format=response_format,
                                        fmt=chat.tool_format, vocab_size=vocab)  # fmt: skip
    except (ChatTemplateError, FieldError, ValueError) as e:
        raise _invalid(e) from None
    room = engine.context_limit - p.sampling.max_tokens
    if len(ids) > room:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            f"chat: the conversation is {len(ids)} tokens; with max_tokens {p.sampling.max_tokens} the model's "
            f"context of {engine.context_limit} leaves room for {max(room, 0)}",
        )
    return ids, text, constraint, opens_reasoning(text, chat.markers), [t["function"]["name"] for t in tools]


def run_chat(engine: Engine, job: Job) -> dict:
    t0 = time.monotonic()
    queue_ms = (t0 - job.created) * 1e3
    p: ChatParams = job.params
    s = p.sampling
    ids, prompt_text, constraint, in_reasoning, names = prepare(engine, p)
    chat = engine.chat_model()
    splitter = ReasoningSplitter(chat.markers, in_reasoning=in_reasoning)
    calls = ToolCallParser(chat.tool_format, names) if names else None
    answer: dict[str, Any] = {REASONING: "", CONTENT: "", "calls": [], "issues": []}

    def out(channel: str, text: str) -> None:
        if calls is not None and channel == CONTENT:  # tool calls leave the content as they close
            for kind, value in calls.feed(text) if text is not None else calls.finish():
                if kind == "content":
                    out_text(CONTENT, value)
                else:
                    answer["calls" if kind == "tool_call" else "issues"].append(value)
        else:
            out_text(channel, text)

    def out_text(channel: str, text: str) -> None:
        answer[channel] += text
        if s.stream:
            job.emit({"reasoning": text} if channel == REASONING else {"text": text})

    def emit(piece: str) -> None:
        for channel, text in splitter.feed(piece):
            out(channel, text)

    reuse = engine.store.acquire(ids, job.document)
    seq = reuse.seq
    t_prefill = time.monotonic()
    try:
        logits = engine.prefill_to(job, seq, ids, len(ids))
        prefill_ms = (time.monotonic() - t_prefill) * 1e3
        if logits is None:
            tokens, stopped, first_ms, spec = [], job.should_stop() or "cancelled", None, None
        else:
            _, tokens, stopped, first_ms, spec = engine.decode(
                job, seq, logits, s, t0, grammar=constraint, emit=emit
            )
    finally:
        engine.store.park(seq, job.document)
    if p.conversation and tokens:
        chat.remember(p.conversation, prompt_text + engine.tok.decode(tokens), ids + tokens)
    for channel, text in splitter.flush():
        out(channel, text)
    if calls is not None:
        out(CONTENT, None)
    total_ms = (time.monotonic() - t0) * 1e3
    engine.accounting.add(
        request_record(
            job, len(ids), reuse.reused, reuse.source, len(tokens), stopped, queue_ms, total_ms, first_ms
        )
    )
    if spec is not None:
        engine.add_spec(spec)
    out = {
        "text": answer[CONTENT],
        "reasoning": answer[REASONING],
        "tool_calls": [c.to_openai() for c in answer["calls"]],
        "tool_call_issues": [i.message for i in answer["issues"]],
        "tokens": len(tokens),
        "stopped": stopped,
        "finish_reason": "tool_calls" if answer["calls"] else _finish(stopped),
        "timing": {"queue_ms": queue_ms, "prefill_ms": prefill_ms, "first_token_ms": first_ms, "total_ms": total_ms},
        "cache": {"prompt_tokens": len(ids), "reused_tokens": reuse.reused,
                  "computed_tokens": len(ids) - reuse.reused, "source": reuse.source},
    }  # fmt: skip
    if constraint is not None:
        out["constrained"] = True
    return out


def _finish(stopped: str) -> str:
    return "length" if stopped in ("length", "deadline") else "stop"
