"""One model worker, and the rules for what it runs next.

- Interactive jobs (complete, generate) run before background ones (prefill); a running
  background job yields at its next chunk when an interactive job arrives.
- Reuse before compute (the rule itself is ``engine.reuse``): a ``complete`` whose prefix only
  adds characters that the document's last suggestion starts with is answered from it at once;
  one that agrees with the suggestion the worker is writing now waits for it and takes its rest
  (the older request, now stale, is answered SUPERSEDED at once; the work goes on for the newer).
- Otherwise a new ``complete`` for a document supersedes the document's waiting, queued and
  running jobs: they are cancelled before their next token (or prefill chunk) and answered with
  SUPERSEDED. Its ``delay_ms`` (the client's debounce) is spent here, where a newer keystroke can
  still supersede it or be served by typing along.
- ``deadline_ms`` caps a job's time from when it may run; it ends with what it has.

Threads: ``submit``, ``cancel``, ``cancel_document`` and ``shutdown`` are called on the asyncio
loop; ``_work`` runs on the worker thread and calls ``Executor.execute``. Every attribute below
the lock is read and written only under ``self._cv`` (its lock), on either thread. Offers
``Scheduler``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque

from .jobs import Executor, Job
from .protocol import CompleteParams, ErrorCode, ProtocolError, chunk_key
from .reuse import Shown, follow, typed_along

log = logging.getLogger(__name__)
LAST_DOCUMENTS = 1024  # documents whose last suggestion is kept for typing along


def context_signature(p: CompleteParams) -> tuple:
    return tuple((c.path, chunk_key(c)) for c in p.context)


def _shown(p: CompleteParams, text: str) -> Shown:
    return Shown(p.prefix, p.suffix, context_signature(p), text)


def _typed_ahead_result(text: str) -> dict:
    return {"text": text, "tokens": 0, "stopped": "typed_ahead", "served": "typed_ahead",
            "timing": {"queue_ms": 0.0, "prefill_ms": 0.0, "first_token_ms": 0.0, "total_ms": 0.0},
            "cache": {"prompt_tokens": 0, "reused_tokens": 0, "computed_tokens": 0, "source": "suggestion"},
            "spec": {"drafted": 0, "accepted": 0}}  # fmt: skip


class Scheduler:
    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        # guarded by self._cv:
        self._interactive: deque[Job] = deque()
        self._background: deque[Job] = deque()
        self._waiting: dict[str, tuple[Job, asyncio.TimerHandle]] = {}  # debouncing, by document
        self._running: Job | None = None
        self._last: OrderedDict[str, Shown] = OrderedDict()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="mellum-model-worker", daemon=True)
        self._thread.start()

    def new_id(self) -> int:
        return next(self._ids)

    @property
    def running(self) -> Job | None:
        with self._cv:
            return self._running

    # ---- on the event loop -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                self._fail(job, ErrorCode.UNAVAILABLE, "the engine is shutting down")
                return
            if job.method == "complete" and job.document is not None:
                if job.params.typed_ahead and (self._serve_typed_along(job) or self._attach(job)):
                    return
                self._supersede(job.document)
                delay = getattr(job.params, "delay_ms", 0.0) / 1e3
                if delay > 0 and self._wait(job, delay):
                    return
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        (self._background if job.background else self._interactive).append(job)
        self._cv.notify()

    def _wait(self, job: Job, delay: float) -> bool:
        """Hold ``job`` for ``delay`` seconds (its deadline moves with it); False without a loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if job.deadline is not None:
            job.deadline += delay
        self._waiting[job.document] = (job, loop.call_later(delay, self._wake, job))
        return True

    def _wake(self, job: Job) -> None:
        with self._cv:
            waiting = self._waiting.get(job.document)
            if waiting is None or waiting[0] is not job:
                return
            del self._waiting[job.document]
            self._enqueue(job)

    def _serve_typed_along(self, job: Job) -> bool:
        p: CompleteParams = job.params
        sig = context_signature(p)
        rest = typed_along(self._last.get(job.document), p.prefix, p.suffix, sig)
        if rest is None:
            return False
        self._remember(job.document, Shown(p.prefix, p.suffix, sig, rest))
        self.executor.accounting.count("typed_ahead")
        job.finished = True
        job.finish(_typed_ahead_result(rest), None)
        return True

    def _attach(self, job: Job) -> bool:
        """Attach to the document's running job when the user typed along what it is writing."""
        run = self._running
        if run is None or run.document != job.document or run.method != "complete" or run.cancel_reason:
            return False
        p: CompleteParams = job.params
        typed = follow(_shown(run.params, run.text), p.prefix, p.suffix, context_signature(p))
        if typed is None:
            return False
        for older in [f for f in run.followers if f[0].document == job.document]:
            run.followers.remove(older)
            self._superseded(older[0])
        run.followers.append((job, typed))
        self._superseded(run)  # its client asked for an older state of the document
        return True

    def _remember(self, document: str, shown: Shown) -> None:
        self._last[document] = shown
        self._last.move_to_end(document)
        while len(self._last) > LAST_DOCUMENTS:
            self._last.popitem(last=False)

    def _supersede(self, document: str) -> None:
        waiting = self._waiting.pop(document, None)
        if waiting is not None:
            waiting[1].cancel()
            self._superseded(waiting[0])
        for queue in (self._interactive, self._background):
            for j in [j for j in queue if j.document == document]:
                queue.remove(j)
                self._superseded(j)
        run = self._running
        if run is not None and run.document == document:
            for follower, _ in run.followers:
                self._superseded(follower)
            run.followers.clear()
            run.cancel("superseded")

    def _superseded(self, job: Job) -> None:
        if job.finished:
            return
        self.executor.accounting.count("superseded")
        self._fail(job, ErrorCode.SUPERSEDED, "superseded by a newer request for the same document")

    def cancel(self, job: Job, reason: str = "cancelled") -> bool:
        with self._cv:
            if self._unqueue(lambda j: j is job):
                return True
            if not job.finished:
                job.cancel(reason)
                return True
        return False

    def cancel_document(self, document: str) -> int:
        with self._cv:
            n = self._unqueue(lambda j: j.document == document)
            run = self._running
            if run is not None and run.document == document:
                run.cancel("cancelled")
                n += 1
        return n

    def _unqueue(self, match) -> int:
        """Cancel the waiting and queued jobs that ``match``; how many."""
        n = 0
        for document, (j, timer) in list(self._waiting.items()):
            if match(j):
                timer.cancel()
                del self._waiting[document]
                self._cancelled(j)
                n += 1
        for queue in (self._interactive, self._background):
            for j in [j for j in queue if match(j)]:
                queue.remove(j)
                self._cancelled(j)
                n += 1
        if self._running is not None:
            for entry in [e for e in self._running.followers if match(e[0])]:
                self._running.followers.remove(entry)
                self._cancelled(entry[0])
                n += 1
        return n

    def _cancelled(self, job: Job) -> None:
        self.executor.accounting.count("cancelled")
        self._fail(job, ErrorCode.CANCELLED, "request cancelled")

    def queued(self) -> int:
        with self._cv:
            return len(self._interactive) + len(self._background) + len(self._waiting)

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            for job, timer in self._waiting.values():
                timer.cancel()
                self._fail(job, ErrorCode.UNAVAILABLE, "the engine is shutting down")
            self._waiting.clear()
            for queue in (self._interactive, self._background):
                while queue:
                    self._fail(queue.popleft(), ErrorCode.UNAVAILABLE, "the engine is shutting down")
            if self._running is not None:
                self._running.cancel("cancelled")
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
            self._running = job
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if job.background:
                # yield to interactive work at the next chunk (a racy read of a deque's length is safe)
                original = job.should_stop
                job.should_stop = lambda o=original: o() or ("preempted" if self._interactive else None)
            try:
                result = self.executor.execute(job)
                error = None
            except ProtocolError as e:
                result, error = None, e
            except Exception as e:  # a backend failure must not kill the worker
                log.exception("job %s failed", job.id)
                result, error = None, ProtocolError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
            self._complete(job, result, error)

    def _complete(self, job: Job, result: dict | None, error: ProtocolError | None) -> None:
        reason = job.cancel_reason
        if error is None and reason in ("superseded", "cancelled"):
            code = ErrorCode.SUPERSEDED if reason == "superseded" else ErrorCode.CANCELLED
            error, result = ProtocolError(code, f"request {reason}"), None
        answers: list[tuple[Job, dict]] = []
        with self._cv:
            self._running = None
            if job.method == "complete" and result is not None and job.document is not None:
                self._remember(job.document, _shown(job.params, result["text"]))
            for follower, typed in job.followers:
                text = result["text"] if result is not None else ""
                if result is not None and text.startswith(typed) and len(text) > len(typed):
                    rest = dict(result, text=text[len(typed) :], served="typed_ahead")
                    self._remember(follower.document, _shown(follower.params, rest["text"]))
                    follower.finished = True
                    answers.append((follower, rest))
                elif not follower.finished:  # it did not write what the user typed: compute anew
                    follower.created = time.monotonic()
                    self._enqueue(follower)
        if not job.finished:
            job.finished = True
            job.finish(result, error)
        for follower, rest in answers:
            follower.finish(rest, None)
