"""A suggestion as LSP results: an inline completion item, or one completion item (fallback).

Pure. Offers `word_start`, `inline_list`, `completion_list`, `feedback_command`.
"""

from __future__ import annotations

from lsprotocol import types

from ..documents import Document

AI_DETAIL = "Mellum (AI suggestion)"
SORT_FIRST = "!mellum"  # "!" sorts before letters, digits and "_" in every client's sort order


def word_start(text: str, offset: int) -> int:
    """Start of the identifier-like word that ends at `offset` (on the same line)."""
    i = offset
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return i


def feedback_command(suggestion_id: str, uri: str, text: str, language: str | None) -> types.Command:
    """`mellum.accepted`, run by the client when the item is accepted."""
    args = {"id": suggestion_id, "uri": uri, "length": len(text), "language": language}
    return types.Command(title="Mellum: suggestion accepted", command="mellum.accepted", arguments=[args])


def _position(doc: Document, offset: int) -> types.Position:
    line, character = doc.position_at(offset)
    return types.Position(line=line, character=character)


def inline_list(
    text: str, doc: Document, offset: int, command: types.Command | None
) -> types.InlineCompletionList:
    if not text:
        return types.InlineCompletionList(items=[])
    at = _position(doc, offset)
    item = types.InlineCompletionItem(insert_text=text, range=types.Range(start=at, end=at), command=command)
    return types.InlineCompletionList(items=[item])


def _label(text: str, limit: int = 60) -> str:
    first = text.split("\n", 1)[0].rstrip("\r")
    shown = first.strip() or text.strip().split("\n", 1)[0]
    more = len(shown) > limit or "\n" in text.strip("\r\n")
    return shown[:limit] + ("…" if more else "")


def completion_list(
    text: str, doc: Document, offset: int, command: types.Command | None
) -> types.CompletionList:
    """One AI item replacing the word at the cursor with word + suggestion; `isIncomplete` so the
    client asks again as the user types instead of filtering a stale suggestion."""
    if not text:
        return types.CompletionList(is_incomplete=True, items=[])
    start = word_start(doc.text, offset)
    word = doc.text[start:offset]
    new_text = word + text
    item = types.CompletionItem(
        label=_label(new_text),
        label_details=types.CompletionItemLabelDetails(description="Mellum AI"),
        kind=types.CompletionItemKind.Text,
        detail=AI_DETAIL,
        documentation=new_text,
        preselect=True,
        sort_text=SORT_FIRST,
        filter_text=new_text,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(
            range=types.Range(start=_position(doc, start), end=_position(doc, offset)), new_text=new_text
        ),
        command=command,
    )
    return types.CompletionList(is_incomplete=True, items=[item])
