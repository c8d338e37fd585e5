"""Run the engine's jobs on an OpenAI-compatible server: vLLM, SGLang, or our own ``engine.http``.

``RemoteEngine`` has the part of ``engine.service.Engine`` that the ``Scheduler`` drives
(the ``engine.jobs.Executor`` interface). Each job is one streamed
request: ``complete`` and ``prefill`` go to ``/v1/completions`` with ``prompt`` and ``suffix`` (or,
with ``fim_template``, the FIM prompt rendered for servers that do not take ``suffix``), repository
context in front of the prompt as ``<filename>{path}\\n{text}`` blocks; ``generate`` goes to
``/v1/completions`` (prompt) or ``/v1/chat/completions`` (messages). Text arrives as server-sent
events and leaves as partials; a cancel or a deadline shuts the socket at once. ``prefill`` asks
for one token, to warm the server's prefix cache.

The I/O is blocking ``http.client``: ``execute`` runs on the scheduler's worker thread; ``handshake``
and ``stats`` (called on the event loop) do no I/O. Offers ``RemoteEngine``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .jobs import Stats, request_record
from .prompt import render_text
from .protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, Sampling

MAX_EVENT_LINE = 16 * 2**20
POLL_S = 0.02  # how often a running request checks whether its job should stop


class _Stopped(Exception):
    """The job should stop: its request was broken off on purpose."""


def _sse_events(resp: http.client.HTTPResponse):
    """The ``data`` of each server-sent event of ``resp``."""
    data: list[str] = []
    while True:
        raw = resp.readline(MAX_EVENT_LINE)
        if not raw:
            if data:
                yield "\n".join(data)
            return
        if not raw.endswith(b"\n") and len(raw) >= MAX_EVENT_LINE:
            raise ValueError(f"an event line is over {MAX_EVENT_LINE} bytes")
        line = raw.rstrip(b"\r\n").decode("utf-8")
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif not line.startswith(":"):  # ":" starts a comment (a keep-alive ping)
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)


def _choice(event: dict) -> tuple[dict, str | None]:
    """(delta, finish_reason) of the first choice of a completion or chat event, streamed or not:
    ``delta`` has ``content`` and, for chat, maybe ``reasoning_content`` and ``tool_calls``."""
    choices = event.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    if choice.get("text") is not None:
        return {"content": choice["text"]}, choice.get("finish_reason")
    delta = choice.get("delta") or choice.get("message") or {}
    return (delta if isinstance(delta, dict) else {}), choice.get("finish_reason")


def _merge_tool_calls(calls: dict[int, dict], deltas: Any) -> None:
    """Add streamed ``tool_calls`` deltas (by index: id, name, pieces of arguments) to ``calls``."""
    for i, d in enumerate(deltas if isinstance(deltas, list) else []):
        if not isinstance(d, dict):
            continue
        call = calls.setdefault(d.get("index", i), {"id": None, "type": "function",
                                                    "function": {"name": "", "arguments": ""}})  # fmt: skip
        call["id"] = d.get("id") or call["id"]
        fn = d.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        arguments = fn.get("arguments") or ""
        call["function"]["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments)


class RemoteEngine:
    """Jobs executed by a remote OpenAI-compatible server at ``url`` (its ``/v1`` base; a bare
    ``http://host:port`` gets ``/v1``). ``model`` defaults to the server's first model;
    ``timeout`` bounds connecting and each wait for bytes."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        *,
        fim_template: str | None = None,
        repo_context: bool = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote URL {url!r} is not http(s)://host[:port][/path]")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/") or "/v1"
        self.url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{self._base}"
        self.token, self.model, self.timeout = token, model, timeout
        self.fim_template, self.repo_context = fim_template, repo_context
        self.context_length: int | None = None
        self._conn: http.client.HTTPConnection | None = None  # kept alive between jobs
        self.accounting = Stats()

    # ---- what the event loop asks (no I/O) ---------------------------------------------------
    def handshake(self) -> dict:
        return {
            "protocol": PROTOCOL_VERSION,
            "model": self.url,
            "model_id": self.model,  # None until the first job has asked the server
            "context_length": self.context_length,
            "fim": True,
            "fim_order": None,
            "backend": "remote",
            "mtp": False,
        }

    def stats(self) -> dict:
        snap = self.accounting.snapshot()
        return {
            "backend": "remote",
            "url": self.url,
            "model": self.model,
            "uptime_s": snap["uptime_s"],
            "totals": snap["totals"],
            "cache": {},
            "spec": {"drafted": 0, "accepted": 0, "acceptance": 0.0},
            "recent": snap["recent"],
        }

    # ---- HTTP --------------------------------------------------------------------------------
    def _error(self, path: str, what: str, code: int = ErrorCode.UNAVAILABLE) -> ProtocolError:
        return ProtocolError(code, f"remote engine {self.url}{path} {what}")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(
        self, method: str, path: str, body: dict | None = None, stopped=None
    ) -> http.client.HTTPResponse:
        """Send a request on the kept-alive connection (a fresh one if the server closed it); a
        response with status 200, else ProtocolError naming the URL and status. ``_Stopped`` when
        ``stopped()`` turns true meanwhile."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "text/event-stream, application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            reused = self._conn is not None
            if self._conn is None:
                kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
                self._conn = kind(self._host, self._port, timeout=self.timeout)
            try:
                self._conn.request(method, self._base + path, body=data, headers=headers)
                resp = self._conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                if stopped is not None and stopped():
                    raise _Stopped from None
                if isinstance(e, TimeoutError):
                    raise self._error(path, f"did not answer within {self.timeout:g} s") from None
                closed = isinstance(
                    e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                )
                if closed and reused and attempt == 0:
                    continue  # the server closed the idle kept-alive connection: once more on a new one
                raise self._error(path, f"is unreachable: {type(e).__name__}: {e}") from None
        if resp.status == 200:
            return resp
        try:
            text = resp.read(65536).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            text = ""
        self._drop()
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text.strip()[:500] or "(no body)"
        code = ErrorCode.INVALID_PARAMS if resp.status in (400, 413, 422) else ErrorCode.UNAVAILABLE
        raise self._error(path, f"answered HTTP {resp.status} {resp.reason}: {message}", code)

    def _discover(self) -> None:
        """Ask ``/models`` for the model name (and context length) when none was given."""
        resp = self._open("GET", "/models")
        try:
            entry = json.loads(resp.read())["data"][0]
            self.model = str(entry["id"])
        except (ValueError, KeyError, IndexError, TypeError, OSError, http.client.HTTPException) as e:
            self._drop()
            raise self._error("/models", f"did not list a model: {type(e).__name__}: {e}") from None
        length = entry.get("max_model_len") or entry.get("context_length")
        self.context_length = length if isinstance(length, int) else None

    def _watch(self, job: Any, done: threading.Event) -> None:
        """Shut the connection's socket once the job should stop, which unblocks the worker's read
        (or connect) at once."""
        while not done.wait(POLL_S):
            if job.should_stop():
                conn = self._conn
                sock = conn.sock if conn is not None else None
                if sock is not None:  # else not connected yet: look again at the next poll
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    return

    def _stream(self, job: Any, path: str, body: dict, on_delta) -> tuple[str | None, dict | None]:
        """Run one streamed request; (finish_reason, usage). Returns early when the job should stop."""
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(job, done), name="mellum-remote-watch", daemon=True
        )
        watcher.start()
        finish = usage = None
        complete = False
        try:
            resp = self._open("POST", path, body, stopped=job.should_stop)
            sse = "text/event-stream" in (resp.getheader("Content-Type") or "")
            # a server that ignored stream=true answers with one JSON object
            events = _sse_events(resp) if sse else iter([resp.read().decode("utf-8")])
            for data in events:
                if job.should_stop():
                    break
                if data == "[DONE]":
                    complete = True
                    break
                event = json.loads(data)
                if not isinstance(event, dict):
                    raise ValueError(f"an event is {type(event).__name__}, not an object")
                if "error" in event:
                    error = event["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise self._error(path, f"failed while streaming: {message}")
                delta, reason = _choice(event)
                finish = reason or finish
                usage = event.get("usage") or usage
                if delta:
                    on_delta(delta)
            else:
                complete = not sse
        except _Stopped:
            pass
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not job.should_stop():
                self._drop()
                if isinstance(e, TimeoutError):
                    raise self._error(path, f"sent nothing for {self.timeout:g} s") from None
                raise self._error(path, f"broke off the stream: {type(e).__name__}: {e}") from None
        finally:
            done.set()
            watcher.join()
        if not complete or job.should_stop():
            self._drop()  # the rest of the stream is unread: the connection cannot carry another request
        else:
            with contextlib.suppress(OSError, http.client.HTTPException):
                resp.read()  # the end of the chunked body, so the connection can be reused
            if resp.will_close:
                self._drop()
        return finish, usage

    # ---- jobs --------------------------------------------------------------------------------
    def _request(self, job: Any) -> tuple[str, dict, Sampling]:
        p = job.params
        if job.method == "prefill":
            body = {"prompt": render_text(p, self.fim_template, self.repo_context)}
            if self.fim_template is None:
                body["suffix"] = p.suffix
            return "/completions", body, Sampling(max_tokens=1, stream=False)
        if job.method == "complete":
            body = {"prompt": render_text(p, self.fim_template, self.repo_context)}
            if self.fim_template is None:
                body["suffix"] = p.suffix
            return "/completions", body, p.sampling
        if job.method == "generate":
            if p.prompt is not None:
                return "/completions", {"prompt": p.prompt}, p.sampling
            return "/chat/completions", {"messages": [dict(m) for m in p.messages]}, p.sampling
        if job.method == "chat":  # the same fields, for vLLM / SGLang / our own server to enforce
            body = {"messages": [dict(m) for m in p.messages]}
            if p.tools:
                body["tools"] = [dict(t) for t in p.tools]
            if p.tool_choice is not None:
                body["tool_choice"] = p.tool_choice
            if p.response_format is not None:
                body["response_format"] = p.response_format
            if p.grammar is not None:
                body["structured_outputs"] = {"grammar": p.grammar}  # vLLM's name for a grammar constraint
            return "/chat/completions", body, p.sampling
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"a remote engine does not run {job.method!r} jobs")

    def execute(self, job: Any) -> dict:
        t0 = time.monotonic()
        queue_ms = (t0 - job.created) * 1e3
        path, body, s = self._request(job)
        text, reasoning, first_ms, pieces = "", "", None, 0
        calls: dict[int, dict] = {}
        finish = usage = None

        def on_delta(delta: dict) -> None:
            nonlocal text, reasoning, first_ms, pieces
            if first_ms is None:
                first_ms = (time.monotonic() - t0) * 1e3
            pieces += 1
            _merge_tool_calls(calls, delta.get("tool_calls"))
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                reasoning += thought
                if s.stream:
                    job.emit({"reasoning": thought})
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                text += piece
                job.text = text
                if s.stream and job.method != "prefill":
                    job.emit({"text": piece})

        if s.max_tokens > 0 and not job.should_stop():
            if self.model is None:
                self._discover()
            body |= {
                "model": self.model,
                "max_tokens": s.max_tokens,
                "temperature": s.temperature,
                "top_p": s.top_p,
            }
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            if s.stop:
                body["stop"] = list(s.stop)
            finish, usage = self._stream(job, path, body, on_delta)
        total_ms = (time.monotonic() - t0) * 1e3
        stopped = job.should_stop() or ("length" if finish == "length" or s.max_tokens == 0 else "stop")
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        reused = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        tokens = int(usage.get("completion_tokens") or pieces)  # a piece per token when not told
        self.accounting.add(
            request_record(
                job, prompt_tokens, reused, "remote", tokens, stopped, queue_ms, total_ms, first_ms
            )
        )
        cache = {
            "prompt_tokens": prompt_tokens,
            "reused_tokens": reused,
            "computed_tokens": prompt_tokens - reused,
        }
        if job.method == "prefill":
            done = "done" if stopped in ("stop", "length") else stopped
            return cache | {"stopped": done, "timing": {"total_ms": total_ms}}
        out = {
            "text": text,
            "tokens": tokens,
            "stopped": stopped,
            "served": "remote",
            "timing": {
                "queue_ms": queue_ms,
                "prefill_ms": first_ms or total_ms,  # as seen from here: the server's time to first text
                "first_token_ms": first_ms,
                "total_ms": total_ms,
            },
            "cache": cache | {"source": "remote"},
            "spec": {"drafted": 0, "accepted": 0},
        }
        if job.method == "chat":
            out |= {"reasoning": reasoning, "tool_calls": [calls[i] for i in sorted(calls)], "tool_call_issues": [],
                    "finish_reason": finish or ("length" if stopped == "length" else "stop")}  # fmt: skip
        return out
