"""pygls' LSP protocol adapted to this server.

- Documents live in our `DocumentStore` (`documents.py`), not in pygls' workspace: the
  didOpen/didChange/didClose built-ins only call our handlers.
- The position encoding is ours (`documents.choose_encoding`), set in the initialize result.
- A request whose params do not fit its method's types is answered with InvalidParams naming
  the bad field (pygls would log it and leave the client waiting).

Offers `MellumProtocol` and `plain` (custom requests' params as plain JSON data).
"""

from __future__ import annotations

from typing import Any

from cattrs import transform_error
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class _Malformed:
    """A request whose params do not fit its method: answered with InvalidParams."""

    jsonrpc = "2.0"

    def __init__(self, msg_id: Any, method: str, reason: str) -> None:
        self.id, self.method, self.reason = msg_id, method, reason


class MellumProtocol(LanguageServerProtocol):
    """pygls' protocol with our document store in place of its workspace documents, our
    position-encoding choice, and an answer for requests with malformed params."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except Exception as e:
            if "id" in data and isinstance(data.get("method"), str):
                cause = e.__cause__ or e
                try:
                    details = "; ".join(transform_error(cause))
                except Exception:
                    details = str(cause)
                return _Malformed(data["id"], data["method"], details or type(cause).__name__)
            raise

    def handle_message(self, message):
        if isinstance(message, _Malformed):
            self._send_response(
                message.id,
                error=types.ResponseError(
                    code=types.ErrorCodes.InvalidParams,
                    message=f"invalid params for {message.method}: {message.reason}",
                ),
            )
            return
        return super().handle_message(message)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        result.capabilities.position_encoding = self._server.docs.encoding
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
