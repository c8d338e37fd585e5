"""One model worker, and the rules for what it runs next.

- Interactive jobs (complete, generate) run before background ones (prefill); a running
  background job yields at its next chunk when an interactive job arrives.
- A new ``complete`` for a document supersedes the document's queued and running jobs: they are
  cancelled before their next token (or prefill chunk) and answered with SUPERSEDED.
- Typed-ahead: when the new request only appends characters that the document's last suggestion
  (finished, or still being generated) starts with, it is answered from that suggestion without
  new compute.
- ``deadline_ms`` caps a job's time from its arrival; it ends with what it has.

``Scheduler.submit`` and ``cancel`` are called on the asyncio loop; ``Engine.execute`` runs on
the worker thread. Offers ``Scheduler``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from .protocol import CompleteParams, ErrorCode, ProtocolError
from .service import Engine, Job, chunk_key

log = logging.getLogger(__name__)


@dataclass
class LastSuggestion:
    prefix: str
    suffix: str
    context: tuple
    text: str


def _context_sig(p: CompleteParams) -> tuple:
    return tuple((c.path, chunk_key(c)) for c in p.context)


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._interactive: deque[Job] = deque()
        self._background: deque[Job] = deque()
        self.running: Job | None = None
        self._last: dict[str, LastSuggestion] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="mellum-model-worker", daemon=True)
        self._thread.start()

    def new_id(self) -> int:
        return next(self._ids)

    # ---- on the event loop -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._stopping:
            job.finish(None, ProtocolError(ErrorCode.UNAVAILABLE, "the engine is shutting down"))
            return
        if job.method == "complete" and job.document is not None:
            if self._typed_ahead(job):
                return
            if self._follow(job):
                return
            self._supersede(job.document)
        with self._cv:
            (self._background if job.background else self._interactive).append(job)
            self._cv.notify()

    def _typed_ahead(self, job: Job) -> bool:
        p: CompleteParams = job.params
        last = self._last.get(job.document)
        if last is None or last.suffix != p.suffix or last.context != _context_sig(p):
            return False
        if not p.prefix.startswith(last.prefix):
            return False
        typed = p.prefix[len(last.prefix) :]
        if not typed or not last.text.startswith(typed) or len(last.text) <= len(typed):
            return False
        rest = last.text[len(typed) :]
        self._last[job.document] = LastSuggestion(p.prefix, p.suffix, last.context, rest)
        self._count("typed_ahead")
        job.finish({"text": rest, "tokens": 0, "stopped": "typed_ahead", "served": "typed_ahead",
                    "timing": {"queue_ms": 0.0, "prefill_ms": 0.0, "first_token_ms": 0.0, "total_ms": 0.0},
                    "cache": {"prompt_tokens": 0, "reused_tokens": 0, "computed_tokens": 0, "source": "suggestion"},
                    "spec": {"drafted": 0, "accepted": 0}}, None)  # fmt: skip
        return True

    def _follow(self, job: Job) -> bool:
        """Attach to the document's running job when the user typed along what it is writing."""
        run = self.running
        if run is None or run.document != job.document or run.method != "complete" or run.cancel_reason:
            return False
        a, b = run.params, job.params
        if a.suffix != b.suffix or _context_sig(a) != _context_sig(b) or not b.prefix.startswith(a.prefix):
            return False
        typed = b.prefix[len(a.prefix) :]
        so_far = run.text
        if not typed or not (so_far.startswith(typed) or typed.startswith(so_far)):
            return False
        with self._cv:  # the worker reads followers under the same lock once the job ends
            if self.running is not run:
                return False
            run.followers.append((job, typed))
        return True

    def _count(self, what: str, n: int = 1) -> None:
        with self.engine.lock:
            self.engine.totals[what] = self.engine.totals.get(what, 0) + n

    def _supersede(self, document: str) -> None:
        with self._cv:
            for queue in (self._interactive, self._background):
                for j in [j for j in queue if j.document == document]:
                    queue.remove(j)
                    self._count("superseded")
                    self._fail(j, ErrorCode.SUPERSEDED, "superseded by a newer request for the same document")
            run = self.running
            if run is not None and run.document == document:
                run.cancel("superseded")

    def cancel(self, job: Job, reason: str = "cancelled") -> bool:
        with self._cv:
            for queue in (self._interactive, self._background):
                if job in queue:
                    queue.remove(job)
                    self._count("cancelled")
                    self._fail(job, ErrorCode.CANCELLED, f"request {reason}")
                    return True
        if not job.finished:
            job.cancel(reason)
            return True
        return False

    def cancel_document(self, document: str) -> int:
        n = 0
        with self._cv:
            for queue in (self._interactive, self._background):
                for j in [j for j in queue if j.document == document]:
                    queue.remove(j)
                    self._count("cancelled")
                    self._fail(j, ErrorCode.CANCELLED, "request cancelled")
                    n += 1
        run = self.running
        if run is not None and run.document == document:
            run.cancel("cancelled")
            n += 1
        return n

    def queued(self) -> int:
        with self._cv:
            return len(self._interactive) + len(self._background)

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            for queue in (self._interactive, self._background):
                while queue:
                    self._fail(queue.popleft(), ErrorCode.UNAVAILABLE, "the engine is shutting down")
            if self.running is not None:
                self.running.cancel("cancelled")
            self._cv.notify_all()
        self._thread.join(timeout=10)

    @staticmethod
    def _fail(job: Job, code: int, message: str) -> None:
        if not job.finished:
            job.finished = True
            job.finish(None, ProtocolError(code, message))

    # ---- on the worker -----------------------------------------------------------------------
    def _next(self) -> Job | None:
        with self._cv:
            while not self._interactive and not self._background and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            job = (self._interactive or self._background).popleft()
            self.running = job
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if job.background:
                # yield to interactive work at the next chunk
                original = job.should_stop
                job.should_stop = lambda o=original: o() or ("preempted" if self._interactive else None)
            try:
                result = self.engine.execute(job)
                error = None
            except ProtocolError as e:
                result, error = None, e
            except Exception as e:  # a backend failure must not kill the worker
                log.exception("job %s failed", job.id)
                result, error = None, ProtocolError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
            with self._cv:
                self.running = None
                followers = list(job.followers)
            self._complete(job, result, error, followers)

    def _complete(self, job: Job, result: dict | None, error: ProtocolError | None, followers: list) -> None:
        reason = job.cancel_reason
        if error is None and reason in ("superseded", "cancelled"):
            code = ErrorCode.SUPERSEDED if reason == "superseded" else ErrorCode.CANCELLED
            error, result = ProtocolError(code, f"request {reason}"), None
        if job.method == "complete" and result is not None and job.document is not None:
            p = job.params
            self._last[job.document] = LastSuggestion(p.prefix, p.suffix, _context_sig(p), result["text"])
        job.finished = True
        job.finish(result, error)
        for follower, typed in followers:
            text = result["text"] if result is not None else ""
            if result is not None and text.startswith(typed) and len(text) > len(typed):
                rest = dict(result)
                rest["text"] = text[len(typed) :]
                rest["served"] = "typed_ahead"
                follower.finished = True
                follower.finish(rest, None)
                p = follower.params
                self._last[follower.document] = LastSuggestion(
                    p.prefix, p.suffix, _context_sig(p), rest["text"]
                )
            else:
                follower.created = time.monotonic()
                with self._cv:
                    self._interactive.append(follower)
                    self._cv.notify()
