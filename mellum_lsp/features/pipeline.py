"""From a document snapshot to engine parameters, and from the engine's text to a suggestion.

Pure functions shared by the language server and `mellum-lsp complete`:
- `Snapshot`: what one completion needs (text, cursor offset, paths, language, line ending).
- `context_budget`: repository-context tokens that fit the model beside the file and the output.
- `engine_params`: the `complete` request (without its context chunks); `document_params`: the
  same with the cursor `offset` in place of prefix and suffix, and the document's model text,
  which the engine client sends as an edit of the version the engine holds.
- `finish`: post-processing (`postprocess`, multi-line only where `multiline_allowed`) and the
  document's line ending restored.

The model sees "\\n" line ends: a CRLF document is normalised on the way in and the suggestion
converted back on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..context import estimate_tokens
from ..context.languages import language_for_path, normalize_language
from ..postprocess import multiline_allowed, postprocess
from ..settings import CompletionSettings

GENERATION_MARGIN = 64  # tokens kept free for the FIM framing and the file header


@dataclass(frozen=True)
class Snapshot:
    uri: str
    text: str
    offset: int
    path: str | None = None  # filesystem path, when the URI is a file
    rel: str | None = None  # workspace-relative path shown to the model
    language: str | None = None
    version: int | None = None

    @property
    def crlf(self) -> bool:
        return "\r\n" in self.text

    @property
    def prefix(self) -> str:
        return self.text[: self.offset]

    @property
    def suffix(self) -> str:
        return self.text[self.offset :]

    def model_text(self) -> tuple[str, str]:
        """(prefix, suffix) with "\\n" line ends (computed once per snapshot)."""
        return self._model

    @cached_property
    def _model(self) -> tuple[str, str]:
        prefix, suffix = self.prefix, self.suffix
        if "\r" in self.text:
            prefix = prefix.replace("\r\n", "\n").replace("\r", "\n")
            suffix = suffix.replace("\r\n", "\n").replace("\r", "\n")
        return prefix, suffix


def language_of(language_id: str | None, path: str | None, text: str | None = None) -> str | None:
    return normalize_language(language_id) or (language_for_path(path, text) if path else None)


def context_budget(context_length: int, max_tokens: int, prefix: str, suffix: str, cap: int) -> int:
    """Tokens for repository context: the model's context minus the file (at most half of the
    context; the engine trims a longer file) and the generation, capped by `cap`."""
    file_tokens = min(estimate_tokens(prefix) + estimate_tokens(suffix), context_length // 2)
    return max(0, min(cap, context_length - max_tokens - file_tokens - GENERATION_MARGIN))


def wants_multiline(snap: Snapshot, settings: CompletionSettings) -> bool:
    if not settings.multiline:
        return False
    prefix, suffix = snap.model_text()
    return multiline_allowed(prefix, suffix, snap.language)


def engine_params(snap: Snapshot, settings: CompletionSettings, multiline: bool) -> dict:
    prefix, suffix = snap.model_text()
    stop = list(settings.stop)
    if not multiline and "\n" not in stop:
        stop.append("\n")  # a single-line suggestion ends at the line's end: stop generating there
    params = {
        "prefix": prefix,
        "suffix": suffix,
        "path": snap.rel or (snap.path.rsplit("/", 1)[-1] if snap.path else None),
        "document": snap.uri,
        "max_tokens": settings.max_tokens,
        "stop": stop,
    }
    if settings.deadline_ms:
        params["deadline_ms"] = float(settings.deadline_ms)
    return params


def document_params(snap: Snapshot, settings: CompletionSettings, multiline: bool) -> tuple[dict, str]:
    """``engine_params`` with the cursor ``offset`` in place of prefix and suffix, and the
    document's model text (sent as an edit of what the engine holds)."""
    params = engine_params(snap, settings, multiline)
    prefix, suffix = params.pop("prefix"), params.pop("suffix")
    params["offset"] = len(prefix)
    return params, prefix + suffix


def finish(raw: str, snap: Snapshot, multiline: bool) -> str:
    """The suggestion to show for the engine's `raw` text ("" when nothing useful is left)."""
    prefix, suffix = snap.model_text()
    text = postprocess(raw, prefix, suffix, snap.language, multiline_allowed=multiline)
    if text and snap.crlf:
        text = text.replace("\n", "\r\n")
    return text
