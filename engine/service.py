"""What the engine does for one request: build the prompt, reuse the cache, prefill, decode.

``Engine.execute(job)`` runs on the scheduler's single model worker. It turns FIM parameters into
token ids in the stable-first layout (context chunks, file header, suffix, prefix), caching the
ids of every context chunk by key and of each document's prefix up to its last line boundary, so
a keystroke tokenises only the line being edited. It takes the longest reusable prefix from the
``PrefixStore``, prefills the rest in chunks (cancellable between chunks), snapshots the stable
part for other requests, decodes (greedy with speculation, or sampling) and parks the sequence
as the document's tip. Offers ``EngineConfig``, ``Engine`` (an ``engine.jobs.Executor``).
"""

from __future__ import annotations

import codecs
import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .backends.base import Backend, Sequence
from .cache import PrefixStore
from .chat.template import ChatTemplateError
from .conversation import ChatModel, run_chat
from .generate import Sampler, SamplingParams, log_softmax
from .healing import TokenHealer
from .jobs import Job, Stats, request_record
from .prompt import FimPieces, layout
from .protocol import (
    PROTOCOL_VERSION,
    CompleteParams,
    ContextChunk,
    ErrorCode,
    GenerateParams,
    PrefillParams,
    ProtocolError,
    Sampling,
    chunk_key,
)
from .speculative import MASK_THREAD, Grammar, SpecConfig, SpecStats, greedy_decode
from .tokenizer import Tokenizer, validate_against_vocab


@dataclass(frozen=True)
class EngineConfig:
    cache_mb: float = 1024.0
    margin: int = 256  # sliding-layer rollback margin, tokens
    prefill_chunk: int = 512
    spec: SpecConfig = field(default_factory=SpecConfig)
    max_context: int | None = None  # default: the model's max_position_embeddings
    snapshot_min_tokens: int = 128  # snapshot the stable part when it is at least this long
    chunk_cache_entries: int = 4096
    result_cache_entries: int = 256  # recent greedy results by prompt (0: off)
    token_healing: bool = True  # re-choose the token the cursor cut through (engine/healing.py)


class FimPrompt(NamedTuple):
    ids: list[int]
    stable: int  # length of the stable part: the kept context blocks and the file header
    dropped: bytes  # what token healing removed from the end of the prefix
    arr: np.ndarray  # ``ids`` as int64
    context: tuple  # (chunk keys, tokens of them kept): identifies ids[:stable - header]


class _Lru(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


def line_cut(text: str) -> int:
    """A cut point before the last line such that tokenising both sides apart equals tokenising
    the whole: right before the newline run that precedes the last line (the pre-tokenizer always
    splits there). 0 when there is none."""
    i = text.rfind("\n")
    while i > 0 and text[i - 1] in "\r\n":
        i -= 1
    return max(i, 0)


class Engine:
    def __init__(self, backend: Backend, tokenizer: Tokenizer, config: EngineConfig | None = None) -> None:
        validate_against_vocab(tokenizer, backend.config.vocab_size)
        self.backend, self.tok = backend, tokenizer
        self.healer = TokenHealer(tokenizer)
        self.config = config or EngineConfig()
        self.store = PrefixStore(backend, int(self.config.cache_mb * 2**20), self.config.margin)
        self.context_limit = self.config.max_context or backend.config.max_position_embeddings
        self._chunks = _Lru(self.config.chunk_cache_entries)  # key -> (path, text, ids)
        self._doc_prefix: dict[str, tuple[str, list[int]]] = {}  # document -> (head text, head ids)
        self._texts = _Lru(64)  # suffix text -> ids
        self._results = _Lru(self.config.result_cache_entries)  # greedy completion results by prompt
        self._context_arrays = _Lru(16)  # chunk keys -> their ids, flattened
        self.accounting = Stats()
        self._chat: ChatModel | None = None
        self._specials: tuple[str, ...] | None = None
        self._spec_lock = threading.Lock()
        self.spec_totals = SpecStats()

    # ---- prompt building -------------------------------------------------------------------
    def handshake(self) -> dict:
        c = self.backend.config
        return {
            "protocol": PROTOCOL_VERSION,
            "model": self.backend.model_dir,
            "model_id": f"mellum:{c.num_layers}x{c.hidden_size}:{c.vocab_size}",
            "context_length": self.context_limit,
            "fim": True,
            "fim_order": self.tok.template.order,
            "backend": self.backend.name,
            "mtp": self.backend.has_mtp,
            "tool_call_format": self._tool_call_format(),
            "train_context": self._train_context(),
        }

    def _train_context(self) -> int | None:
        """The sequence length the model was trained on, when its folder says
        (``mellum_train_context`` in config.json); clients aim their prompts at it."""
        try:
            value = json.loads((Path(self.backend.model_dir) / "config.json").read_text()).get(
                "mellum_train_context"
            )
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def _tool_call_format(self) -> dict | None:
        """How this model writes a tool call (None when the folder has no chat template)."""
        try:
            fmt = self.chat_model().tool_format
        except ProtocolError:
            return None
        return {
            "start": fmt.start,
            "end": fmt.end,
            "name_key": fmt.name_key,
            "arguments_key": fmt.arguments_key,
        }

    def remember_chunk(self, chunk: ContextChunk) -> tuple[int, ...]:
        """The chunk's ids, cached by key (``engine.inputs`` filled in texts sent by key)."""
        key = chunk_key(chunk)
        if chunk.text is None:
            if key not in self._chunks:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_CONTEXT_KEY, f"unknown context key {key!r}; send it with its text"
                )
            self._chunks.move_to_end(key)
            return self._chunks[key]
        return self._chunks.get_or(
            key, lambda: (self.tok.fim.file, *self.tok.encode(f"{chunk.path}\n{chunk.text}"))
        )

    def _prefix_ids(self, document: str | None, prefix: str) -> list[int]:
        cut = line_cut(prefix)
        head = prefix[:cut]
        cached = self._doc_prefix.get(document) if document else None
        if cached is not None and cached[0] == head:
            head_ids = cached[1]
        else:
            head_ids = self.tok.encode(head)
            if document:
                self._doc_prefix[document] = (head, head_ids)
        return head_ids + self.tok.encode(prefix[cut:])

    def fim_ids(self, p: CompleteParams | PrefillParams, reserve: int, heal: bool = False) -> FimPrompt:
        """The prompt of a FIM request; see ``FimPrompt``."""
        context = tuple(self.remember_chunk(c) for c in p.context)
        context_key = tuple(chunk_key(c) for c in p.context)
        header = (self.tok.fim.file, *self.tok.encode(f"{p.path}\n")) if p.path else ()
        suffix = self._texts.get_or(p.suffix, lambda: tuple(self.tok.encode(p.suffix)))
        prefix = self._prefix_ids(p.document, p.prefix)
        dropped = b""
        if heal:
            prefix, dropped = self.healer.heal(prefix)
        pieces = FimPieces(context, header, suffix, tuple(prefix))
        ids, stable = layout(self.tok, pieces, max(16, self.context_limit - reserve))
        # The ids as an array, from the context's cached array: per keystroke only the file part is converted.
        flat = self._context_arrays.get_or(
            context_key, lambda: np.fromiter(itertools.chain.from_iterable(context), dtype=np.int64)
        )
        kept = stable - len(header)
        arr = np.concatenate([flat[:kept], np.asarray(ids[kept:], dtype=np.int64)])
        return FimPrompt(ids, stable, dropped, arr, (context_key, kept))

    def chat_ids(self, p: GenerateParams) -> list[int]:
        if p.prompt is not None:
            return self.tok.encode(p.prompt)
        try:
            return self.chat_model().template.encode(self.tok, list(p.messages))
        except ChatTemplateError as e:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"generate: {e}") from None

    # ---- running ---------------------------------------------------------------------------
    def prefill_to(self, job: Job, seq: Sequence, ids: list[int], upto: int) -> np.ndarray | None:
        """Extend ``seq`` with ids[len(seq.ids):upto] in chunks; the last logits, or None if stopped."""
        logits = None
        start = len(seq.ids)
        for i in range(start, upto, self.config.prefill_chunk):
            if job.should_stop():
                return None
            logits = self.backend.forward(
                seq, ids[i : min(upto, i + self.config.prefill_chunk)], logits_to_keep=1
            )
        return None if logits is None else logits[-1]

    def chat_model(self) -> ChatModel:
        """The folder's chat template, tool-call format and reasoning markers (read once)."""
        if self._chat is None:
            self._chat = ChatModel.from_folder(self.backend.model_dir)
        return self._chat

    def special_texts(self) -> tuple[str, ...]:
        """The text of every special token (user text holding one is never encoded as it)."""
        if self._specials is None:
            self._specials = tuple(self.tok.id_to_token(i) for i in self.tok.special_ids)
        return self._specials

    def add_spec(self, spec: SpecStats) -> None:
        with self._spec_lock:
            self.spec_totals.add(spec)

    def execute(self, job: Job) -> dict:
        if job.method == "chat":
            return run_chat(self, job)
        t0 = time.monotonic()
        queue_ms = (t0 - job.created) * 1e3
        p = job.params
        sampling = getattr(p, "sampling", Sampling(max_tokens=0))
        dropped = b""
        if job.method == "generate":
            ids, stable = self.chat_ids(p), 0
            arr = None
            if len(ids) + sampling.max_tokens > self.context_limit:
                ids = ids[-(self.context_limit - sampling.max_tokens) :]
        else:
            heal = job.method == "complete" and self.config.token_healing
            prompt = self.fim_ids(p, reserve=sampling.max_tokens, heal=heal)
            ids, stable, dropped, arr = prompt.ids, prompt.stable, prompt.dropped, prompt.arr
        if not ids:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{job.method}: the prompt is empty")
        # Greedy completions are a function of the prompt: an undo or a backspace back to a state
        # seen before is answered from the recent results without model work.
        result_key = None
        if job.method == "complete" and sampling.temperature == 0 and self.config.result_cache_entries:
            context, kept = prompt.context
            result_key = (
                context,
                hash(tuple(ids[kept:])),
                len(ids),
                dropped,
                sampling.max_tokens,
                sampling.stop,
            )
            cached = self._results.get(result_key)
            if cached is not None:
                self._results.move_to_end(result_key)
                self.accounting.count("result_cache")
                total_ms = (time.monotonic() - t0) * 1e3
                return cached | {"served": "result_cache", "timing": {"queue_ms": queue_ms, "prefill_ms": 0.0,
                                 "first_token_ms": total_ms, "total_ms": total_ms}}  # fmt: skip
        reuse = self.store.acquire(ids, job.document, arr)
        seq = reuse.seq
        snapshot = False
        result: dict[str, Any] = {}
        t_prefill = time.monotonic()
        try:
            if stable >= self.config.snapshot_min_tokens and len(seq.ids) < stable:
                if self.prefill_to(job, seq, ids, stable) is not None:
                    snapshot = self.store.snapshot(seq)
            if job.method == "prefill":
                self.prefill_to(job, seq, ids, len(ids))
                text, tokens, stopped, first_ms, spec = "", [], job.should_stop() or "done", None, SpecStats()
            else:
                logits = self.prefill_to(job, seq, ids, len(ids))
                prefill_ms = (time.monotonic() - t_prefill) * 1e3
                if logits is None:
                    text, tokens, stopped, first_ms, spec = (
                        "",
                        [],
                        job.should_stop() or "cancelled",
                        None,
                        SpecStats(),
                    )
                else:
                    logits = self.healer.mask(logits, dropped)
                    text, tokens, stopped, first_ms, spec = self.decode(
                        job, seq, logits, sampling, t0, dropped
                    )
                result["timing_prefill_ms"] = prefill_ms
        finally:
            self.store.park(seq, job.document, None if arr is None else arr[: len(seq.ids)])
        total_ms = (time.monotonic() - t0) * 1e3
        computed = len(ids) - reuse.reused
        record = request_record(job, len(ids), reuse.reused, reuse.source, len(tokens), stopped, queue_ms,
                                total_ms, first_ms, snapshot=snapshot)  # fmt: skip
        self.accounting.add(record)
        self.add_spec(spec)
        if job.method == "prefill":
            return {"prompt_tokens": len(ids), "reused_tokens": reuse.reused, "computed_tokens": computed,
                    "stopped": stopped, "timing": {"total_ms": total_ms}}  # fmt: skip
        out = {
            "text": text,
            "tokens": len(tokens),
            "stopped": stopped,
            "served": "model",
            "timing": {
                "queue_ms": queue_ms,
                "prefill_ms": result.get("timing_prefill_ms", 0.0),
                "first_token_ms": first_ms,
                "total_ms": total_ms,
            },
            "cache": {
                "prompt_tokens": len(ids),
                "reused_tokens": reuse.reused,
                "computed_tokens": computed,
                "source": reuse.source,
            },  # fmt: skip
            "spec": {"drafted": spec.drafted, "accepted": spec.accepted},
        }
        if result_key is not None and stopped in ("stop", "length"):
            self._results.get_or(result_key, lambda: out)
        return out

    def decode(
        self,
        job: Job,
        seq: Sequence,
        logits: np.ndarray,
        s: Sampling,
        t0: float,
        dropped: bytes = b"",
        grammar: Grammar | None = None,
        emit: Callable[[str], None] | None = None,
    ):
        """Generate after ``seq``; returns (text, tokens, stopped, first_token_ms, spec stats).

        ``dropped``: bytes token healing removed from the prompt; the first token starts with
        them and they are not part of the text. ``grammar`` constrains every token; ``emit`` gets
        each new piece of text (default: a ``{"text"}`` partial when streaming)."""
        if emit is None:
            emit = (lambda piece: job.emit({"text": piece})) if s.stream else (lambda piece: None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        skip = [dropped]
        eos = set(self.tok.eos_ids)
        tokens: list[int] = []
        first_ms: list[float] = []
        state = {"text": "", "stop": False}

        def on_tokens(new: list[int]) -> bool:
            if not first_ms:
                first_ms.append((time.monotonic() - t0) * 1e3)
            for t in new:
                if t in eos:
                    state["stop"] = True
                    break
                tokens.append(t)
                raw = self.healer.token_bytes(t)
                if skip[0]:
                    raw, skip[0] = raw[len(skip[0]) :], b""
                piece = decoder.decode(raw)
                if not piece:
                    continue
                before = state["text"]
                text = before + piece
                cut = min((i for i in (text.find(x, max(0, len(before) - len(x) + 1)) for x in s.stop) if i >= 0),
                          default=-1)  # fmt: skip
                if cut >= 0:
                    text = text[:cut]
                    state["stop"] = True
                state["text"] = text
                job.text = text
                if len(text) > len(before):
                    emit(text[len(before) :])
                if state["stop"]:
                    break
            return state["stop"]

        if s.max_tokens == 0:
            return "", [], "length", None, SpecStats()
        if s.temperature == 0:
            _, stopped, spec = greedy_decode(self.backend, seq, logits, s.max_tokens, self.config.spec, on_tokens,
                                             job.should_stop, grammar, self.tok.eos_ids)  # fmt: skip
        else:
            spec = SpecStats()
            sampler = Sampler(
                SamplingParams(max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
            )
            stopped = "length"
            mask = None  # the next step's grammar mask, computed while the model runs
            for i in range(s.max_tokens):
                if grammar is None:
                    token = sampler(logits)
                else:
                    token = sampler(grammar.allow(logits, None if mask is None else mask.result()))
                    if token not in eos:
                        grammar.advance(token)
                if on_tokens([token]):
                    stopped = "stop"
                    break
                reason = job.should_stop()
                if reason:
                    stopped = reason
                    break
                if i + 1 < s.max_tokens:
                    mask = MASK_THREAD.submit(grammar.mask) if grammar is not None else None
                    logits = self.backend.forward(seq, [token], logits_to_keep=1)[-1]
        if stopped == "length" and state["stop"]:
            stopped = "stop"
        if not state["stop"] and stopped not in ("cancelled", "superseded"):
            tail = decoder.decode(b"", final=True)
            if tail:
                state["text"] += tail
                emit(tail)
        return state["text"], tokens, stopped, (first_ms[0] if first_ms else None), spec

    def stats(self) -> dict:
        with self._spec_lock:
            spec = self.spec_totals
        snap = self.accounting.snapshot()
        return {
            "backend": self.backend.name,
            "uptime_s": snap["uptime_s"],
            "totals": snap["totals"],
            "cache": self.store.stats(),
            "spec": {
                "drafted": spec.drafted,
                "accepted": spec.accepted,
                "acceptance": spec.acceptance,
                "mtp_drafted": spec.mtp_drafted,
                "mtp_accepted": spec.mtp_accepted,
                "lookup_drafted": spec.lookup_drafted,
                "lookup_accepted": spec.lookup_accepted,
            },  # fmt: skip
            "recent": snap["recent"],
        }


def token_logprob(logits: np.ndarray, token: int) -> float:
    return float(log_softmax(logits)[token])
