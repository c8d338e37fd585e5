"""Our own syntax diagnostics (source `mellum`), so that "Fix with Mellum" works with no other server.

- push: `textDocument/publishDiagnostics` when a document opens and, debounced, after it changes;
  cleared when it closes. Only for clients without pull diagnostics: a client that pulls and also
  receives pushes shows every problem twice.
- pull: `textDocument/diagnostic` (`diagnosticProvider` is advertised); a document unchanged since
  the client's `previousResultId` is answered `unchanged`.
The problems are `edits.syntax.diagnostic_problems` (for Python the compiler's one precise error),
computed off the event loop with a grammar registry of this module's own (tree-sitter parsers are
not shared across threads).

Pure: `problem_diagnostic` (a problem as the code action sees it: `edits.Diagnostic`),
`lsp_range`, `to_lsp`. Offers `register`, `Diagnostics`, `SOURCE`, `DEBOUNCE_S`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from ..context.languages import LanguageRegistry
from ..documents import Document, DocumentError
from ..edits import Diagnostic, SyntaxProblem, diagnostic_problems
from ..edits.syntax import supports
from .pipeline import language_of
from .state import MellumServer
from .workspace import uri_to_path

log = logging.getLogger(__name__)
SOURCE = "mellum"
CODE = "syntax"
DEBOUNCE_S = 0.3  # after the last change, before the document is checked again


# ---- pure ----------------------------------------------------------------------------------
def problem_diagnostic(problem: SyntaxProblem) -> Diagnostic:
    """The diagnostic a code-action request brings back for `problem` (character offsets)."""
    return Diagnostic(problem.focus[0], problem.focus[1], problem.message, 1, SOURCE, CODE)


def lsp_range(doc: Document, start: int, end: int) -> types.Range:
    """[start, end) as an LSP range; an empty range on a character widens to cover it (an editor
    underlines nothing otherwise), one at a line's end stays empty."""
    if start == end < len(doc.text) and doc.text[start] not in "\r\n":
        end += 1
    (l0, c0), (l1, c1) = doc.position_at(start), doc.position_at(end)
    return types.Range(start=types.Position(line=l0, character=c0), end=types.Position(line=l1, character=c1))


def to_lsp(doc: Document, problem: SyntaxProblem) -> types.Diagnostic:
    d = problem_diagnostic(problem)
    return types.Diagnostic(
        range=lsp_range(doc, d.start, d.end),
        message=d.message,
        severity=types.DiagnosticSeverity.Error,
        source=SOURCE,
        code=CODE,
    )


# ---- the publisher -------------------------------------------------------------------------
class Diagnostics:
    """Checks documents (one at a time, in a worker thread) and remembers the last result of each."""

    def __init__(self, server: MellumServer, debounce_s: float = DEBOUNCE_S) -> None:
        self.server, self.debounce_s = server, debounce_s
        self.registry = LanguageRegistry()  # used only in the worker thread, under `_lock`
        self._lock = asyncio.Lock()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._results: dict[str, tuple[str, str, list[SyntaxProblem]]] = {}  # uri -> (text, id, problems)
        self._ids = itertools.count(1)

    def pushes(self) -> bool:
        """Whether to push: the client does not pull."""
        return self.server.capability("text_document.diagnostic") is None

    def language(self, doc: Document) -> str | None:
        return language_of(doc.language_id, uri_to_path(doc.uri), doc.text)

    async def check(self, doc: Document) -> tuple[str, list[SyntaxProblem]]:
        """(result id, problems) of the document's text now; computed once per text."""
        text, uri = doc.text, doc.uri
        held = self._results.get(uri)
        if held is not None and held[0] == text:
            return held[1], held[2]
        language = self.language(doc)
        problems: list[SyntaxProblem] = []
        if supports(language):
            path = uri_to_path(uri) or uri
            async with self._lock:
                problems = await asyncio.to_thread(diagnostic_problems, text, language, path, self.registry)
        result_id = str(next(self._ids))
        self._results[uri] = (text, result_id, problems)
        return result_id, problems

    # -- push --
    def changed(self, uri: str) -> None:
        """The document changed: check it once changes pause."""
        if not self.pushes():
            return
        timer = self._timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[uri] = loop.call_later(self.debounce_s, lambda: self.server.spawn(self.publish(uri)))

    def opened(self, uri: str) -> None:
        if self.pushes():
            self.server.spawn(self.publish(uri))

    def closed(self, uri: str) -> None:
        timer = self._timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        self._results.pop(uri, None)
        if self.pushes():
            self.server.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=uri, diagnostics=[])
            )

    async def publish(self, uri: str) -> None:
        self._timers.pop(uri, None)
        if uri not in self.server.docs:
            return
        doc = self.server.docs.get(uri)
        version = doc.version
        _, problems = await self.check(doc)
        if uri not in self.server.docs or self.server.docs.get(uri).version != version:
            return  # changed while checking: the next check publishes
        params = types.PublishDiagnosticsParams(
            uri=uri, diagnostics=[to_lsp(doc, p) for p in problems], version=version
        )
        self.server.text_document_publish_diagnostics(params)

    # -- pull --
    async def pull(self, params: types.DocumentDiagnosticParams) -> types.DocumentDiagnosticReport:
        try:
            doc = self.server.docs.get(params.text_document.uri)
        except DocumentError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        result_id, problems = await self.check(doc)
        if params.previous_result_id == result_id:
            return types.RelatedUnchangedDocumentDiagnosticReport(result_id=result_id)
        items = [to_lsp(doc, p) for p in problems]
        return types.RelatedFullDocumentDiagnosticReport(items=items, result_id=result_id)


def _after(server: MellumServer, method: str, listener: Callable[[str], None]) -> None:
    """Call `listener(uri)` after the handler registered for the document notification `method`
    (`features/sync.py` owns it and must be registered first), or as its handler when none is."""
    features = server.protocol.fm.features
    handler = features.get(method)

    def then(params) -> None:
        try:
            listener(params.text_document.uri)
        except Exception:  # a diagnostics failure must not break document sync
            log.exception("diagnostics after %s failed", method)

    if handler is None:
        server.feature(method)(lambda ls, params: then(params))
        return

    def both(*args):
        result = handler(*args)
        then(args[-1])
        return result

    features[method] = both


def register(server: MellumServer) -> None:
    diagnostics = Diagnostics(server)
    _after(server, types.TEXT_DOCUMENT_DID_OPEN, diagnostics.opened)
    _after(server, types.TEXT_DOCUMENT_DID_CHANGE, diagnostics.changed)
    _after(server, types.TEXT_DOCUMENT_DID_CLOSE, diagnostics.closed)
    options = types.DiagnosticOptions(
        inter_file_dependencies=False, workspace_diagnostics=False, identifier=SOURCE
    )

    async def pull(ls: MellumServer, params: types.DocumentDiagnosticParams):
        return await diagnostics.pull(params)

    server.feature(types.TEXT_DOCUMENT_DIAGNOSTIC, options)(pull)
