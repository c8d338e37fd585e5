"""The user's consent: a proposed edit as a `workspace/applyEdit` that the client must confirm.

The agent never writes a file. `apply_edit_params(...)` turns the old and new text of a file into
`ApplyWorkspaceEditParams` (plain JSON): minimal `TextEdit`s (`edits.diff.minimal_edits`) in a
`TextDocumentEdit` (versioned when the document is open in the editor, so a stale edit is refused)
whose edits carry the change annotation "Mellum" with `needsConfirmation: true`. A client without
`documentChanges` support gets plain `changes` (it cannot show the annotation).
`outcome(result)` reads the client's answer.

Offers `apply_edit_params`, `ApplyOutcome`, `outcome`, `ANNOTATION_ID`, `LABEL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..documents import Document
from ..edits.diff import minimal_edits

ANNOTATION_ID = "mellum"
LABEL = "Mellum"


def apply_edit_params(
    uri: str,
    old: str,
    new: str,
    *,
    version: int | None,
    encoding: str = "utf-16",
    document_changes: bool = True,
    description: str | None = None,
) -> dict:
    """`workspace/applyEdit` params turning `old` (the client's text of `uri`) into `new`."""
    doc = Document(uri, old, encoding=encoding)
    edits = []
    for e in minimal_edits(old, new):
        (sl, sc), (el, ec) = doc.position_at(e.start), doc.position_at(e.end)
        edit = {
            "range": {"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}},
            "newText": e.new_text,
        }
        if document_changes:
            edit["annotationId"] = ANNOTATION_ID
        edits.append(edit)
    annotation = {"label": LABEL, "needsConfirmation": True}
    if description:
        annotation["description"] = description
    if document_changes:
        edit_obj: dict[str, Any] = {
            "documentChanges": [{"textDocument": {"uri": uri, "version": version}, "edits": edits}],
            "changeAnnotations": {ANNOTATION_ID: annotation},
        }
    else:
        edit_obj = {"changes": {uri: edits}}
    return {"label": f"{LABEL}: {description}" if description else LABEL, "edit": edit_obj}


@dataclass(frozen=True)
class ApplyOutcome:
    applied: bool
    reason: str = ""  # why not, in words the model can act on


def outcome(result: Any) -> ApplyOutcome:
    """The client's `ApplyWorkspaceEditResult` (typed or plain) as an `ApplyOutcome`."""
    if isinstance(result, dict):
        applied, reason = result.get("applied"), result.get("failureReason")
    else:
        applied, reason = getattr(result, "applied", None), getattr(result, "failure_reason", None)
    if applied:
        return ApplyOutcome(True)
    return ApplyOutcome(False, reason or "the user refused the edit")
