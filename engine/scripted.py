"""A test hook: an ``Executor`` whose model outputs are read from a file, so that a test can force an
answer through the real engine process (scheduler, RPC, cancellation) — an edit that breaks the
file, say, which the language server must never offer.

The file is JSON: ``{"complete": [text, ...], "chat": [text, ...], "delay_ms": 0}``. Each method's
texts are served in order and start over when used up (``generate`` takes ``complete``'s);
``delay_ms`` holds every answer that long, in steps that honour cancellation and deadlines. What
each request asked is kept for ``stats`` (``scripted.requests``: method, document, prompt sizes,
temperature). Selected by the hidden ``--scripted FILE`` flag of ``engine serve``.
Offers ``ScriptedEngine``, ``load_script``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from pathlib import Path

from .jobs import Job, Stats, request_record
from .protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError

METHODS = ("complete", "chat")
_STEP_S = 0.01


def load_script(path: str | Path) -> tuple[dict[str, list[str]], float]:
    """(texts by method, delay in ms) of a script file; ValueError naming what is wrong."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--scripted {path}: cannot read a JSON script: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--scripted {path}: expected an object with 'complete' and/or 'chat' lists")
    texts: dict[str, list[str]] = {}
    for method in METHODS:
        items = raw.get(method, [])
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise ValueError(f"--scripted {path}: '{method}' must be a list of strings, got {items!r}")
        texts[method] = items
    delay = raw.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ValueError(f"--scripted {path}: 'delay_ms' must be a number >= 0, got {delay!r}")
    return texts, float(delay)


class ScriptedEngine:
    """Answers ``complete``/``generate`` and ``chat`` jobs with the script's texts, cycling."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.texts, self.delay_ms = load_script(path)
        self._next = {m: itertools.cycle(t) if t else None for m, t in self.texts.items()}
        self._lock = threading.Lock()
        self.requests: deque[dict] = deque(maxlen=200)
        self.accounting = Stats()

    def handshake(self) -> dict:
        return {"protocol": PROTOCOL_VERSION, "model": f"scripted:{self.path}", "model_id": "scripted",
                "context_length": 32768, "fim": True, "fim_order": "spm", "backend": "scripted",
                "mtp": False}  # fmt: skip

    def _text(self, method: str) -> str:
        texts = self._next["chat" if method == "chat" else "complete"]
        if texts is None:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, f"the script {self.path} has no answers for {method!r}"
            )
        with self._lock:
            return next(texts)

    def _note(self, job: Job) -> None:
        p = job.params
        sampling = getattr(p, "sampling", None)
        self.requests.append({
            "method": job.method, "document": job.document,
            "prefix_chars": len(getattr(p, "prefix", "") or ""), "suffix_chars": len(getattr(p, "suffix", "") or ""),
            "context": len(getattr(p, "context", ()) or ()), "messages": len(getattr(p, "messages", ()) or ()),
            "grammar": bool(getattr(p, "grammar", None)),
            "temperature": sampling.temperature if sampling is not None else None,
        })  # fmt: skip

    def execute(self, job: Job) -> dict:
        t0 = time.monotonic()
        self._note(job)
        if job.method == "prefill":
            return {"prompt_tokens": 0, "reused_tokens": 0, "computed_tokens": 0, "stopped": "done",
                    "timing": {"total_ms": 0.0}}  # fmt: skip
        text = self._text(job.method)
        stopped = "stop"
        while (time.monotonic() - t0) * 1e3 < self.delay_ms:
            reason = job.should_stop()
            if reason:
                text, stopped = "", reason
                break
            time.sleep(_STEP_S)
        total_ms = (time.monotonic() - t0) * 1e3
        tokens = len(text.split())
        record = request_record(
            job, 0, 0, "none", tokens, stopped, (t0 - job.created) * 1e3, total_ms, total_ms
        )
        self.accounting.add(record)
        timing = {
            "queue_ms": record["queue_ms"],
            "prefill_ms": 0.0,
            "first_token_ms": total_ms,
            "total_ms": total_ms,
        }
        out = {"text": text, "tokens": tokens, "stopped": stopped, "served": "model", "timing": timing,
               "cache": {"prompt_tokens": 0, "reused_tokens": 0, "computed_tokens": 0, "source": "none"}}  # fmt: skip
        if job.method == "chat":
            out |= {"reasoning": "", "tool_calls": [], "tool_call_issues": [], "finish_reason": "stop"}
        return out

    def stats(self) -> dict:
        snap = self.accounting.snapshot()
        return {"backend": "scripted", "uptime_s": snap["uptime_s"], "totals": snap["totals"],
                "recent": snap["recent"], "scripted": {"path": self.path, "requests": list(self.requests)}}  # fmt: skip
