"""pygls' LSP protocol adapted to this server.

- Documents live in our `DocumentStore` (`documents.py`), not in pygls' workspace: the
  didOpen/didChange/didClose built-ins only call our handlers.
- The position encoding is ours (`documents.choose_encoding`), set in the initialize result.
- A request whose params do not fit its method's types is answered with InvalidParams naming
  the bad field (pygls would log it and leave the client waiting).
- pygls keeps the future of every notification (every didChange) and of every handler its
  built-in handlers call in its request table forever: here they are dropped once done.
- The lifecycle, as LSP says (`lifecycle_refusal`): a request before `initialize` gets
  ServerNotInitialized (-32002), one after `shutdown` InvalidRequest (pygls would not answer it),
  a second `initialize` InvalidRequest; notifications out of order are dropped; `exit` always works.

Offers `MellumProtocol`, `lifecycle_refusal` and `plain` (custom requests' params as plain JSON data).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from cattrs import transform_error
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class _Malformed:
    """A request that cannot be handled: params that do not fit its method (InvalidParams), or an
    id on a notification method (InvalidRequest)."""

    jsonrpc = "2.0"

    def __init__(
        self, msg_id: Any, method: str, reason: str, code: int = types.ErrorCodes.InvalidParams
    ) -> None:
        self.id, self.method, self.reason, self.code = msg_id, method, reason, code


def lifecycle_refusal(method: str, initialized: bool, shut_down: bool) -> tuple[int, str] | None:
    """(error code, message) when `method` may not come now in the session's lifecycle, else None."""
    if method == types.EXIT:
        return None
    if shut_down:
        return types.ErrorCodes.InvalidRequest, f"the server is shut down: {method} is refused (send exit)"
    if method == types.INITIALIZE:
        if initialized:
            return (
                types.ErrorCodes.InvalidRequest,
                "initialize was already received; it may be sent only once",
            )
        return None
    if not initialized:
        return types.ErrorCodes.ServerNotInitialized, f"{method} before initialize"
    return None


class MellumProtocol(LanguageServerProtocol):
    """pygls' protocol with our document store in place of its workspace documents, our
    position-encoding choice, the LSP lifecycle enforced, and an answer for requests with
    malformed params."""

    _initialize_seen = False

    def structure_message(self, data: dict[str, Any]):
        try:
            message = super().structure_message(data)
        except Exception as e:
            if "id" in data and isinstance(data.get("method"), str):
                cause = e.__cause__ or e
                try:
                    details = "; ".join(transform_error(cause))
                except Exception:
                    details = str(cause)
                return _Malformed(data["id"], data["method"], details or type(cause).__name__)
            raise
        if "id" in data and isinstance(data.get("method"), str) and not hasattr(message, "id"):
            # a notification method sent as a request: JSON-RPC still owes it an answer
            reason = f"{data['method']} is a notification: send it without an id"
            return _Malformed(data["id"], data["method"], reason, types.ErrorCodes.InvalidRequest)
        return message

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        answers = isinstance(callback, functools.partial) and callback.func == self._send_handler_result
        future = self._request_futures.get(msg_id)
        if future is not None and not answers:  # only a request's answer removes its entry
            # later, on the loop: a callback may run inside pygls' loop over the table (shutdown
            # cancels every future in it) or on a worker thread
            loop = asyncio.get_running_loop()

            def forget(_f, i=msg_id) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to keep tidy
                    loop.call_soon_threadsafe(self._request_futures.pop, i, None)

            future.add_done_callback(forget)

    def handle_message(self, message):
        method = getattr(message, "method", None)
        if isinstance(method, str):
            refusal = lifecycle_refusal(method, self._initialize_seen, self._shutdown)
            if refusal is not None:
                if hasattr(message, "id"):  # a request: answer it; a notification is dropped
                    self._send_response(
                        message.id, error=types.ResponseError(code=refusal[0], message=refusal[1])
                    )
                return
            if method == types.INITIALIZE and not isinstance(message, _Malformed):
                self._initialize_seen = True
        if isinstance(message, _Malformed):
            self._send_response(
                message.id,
                error=types.ResponseError(
                    code=message.code,
                    message=f"invalid params for {message.method}: {message.reason}"
                    if message.code == types.ErrorCodes.InvalidParams
                    else f"invalid request: {message.reason}",
                ),
            )
            return
        return super().handle_message(message)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        result.capabilities.position_encoding = self._server.docs.encoding
        # pygls does not announce LSP 3.18's workspace/textDocumentContent (the chat transcripts)
        options = self.fm.feature_options.get(types.WORKSPACE_TEXT_DOCUMENT_CONTENT)
        if options is not None and result.capabilities.workspace is not None:
            result.capabilities.workspace.text_document_content = options
        return result

    def _user(self, method: str, params: Any):
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_CLOSE, params)


def plain(value: Any) -> Any:
    """Params of custom requests as JSON-like data (pygls gives objects as namedtuples)."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
