"""When a completion can be answered without running the model: the engine's one owner of that rule.

A user who types the first characters of the suggestion on screen should see the rest of it at
once. ``typed_along`` is that rule for a finished suggestion, ``follow`` for one still being
generated. Both compare the document around the cursor (prefix, suffix) and the repository
context the request was made with: a suggestion made for other context is not reused.

Pure. Offers ``Shown``, ``typed_along``, ``follow``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shown:
    """A suggestion as the client received it: where (the text around the cursor, the context's
    signature) and what."""

    prefix: str
    suffix: str
    context: tuple
    text: str


def typed_along(shown: Shown | None, prefix: str, suffix: str, context: tuple) -> str | None:
    """What is left of ``shown`` when the document now reads ``prefix`` | ``suffix``, or None.

    The user typed along when the new prefix is the old one plus characters the suggestion starts
    with, and neither the text after the cursor nor the context changed. The same position gives
    the same suggestion; typing all of it (or anything else) gives None.
    """
    if shown is None or not shown.text or suffix != shown.suffix or context != shown.context:
        return None
    if not prefix.startswith(shown.prefix):
        return None
    typed = prefix[len(shown.prefix) :]
    if not shown.text.startswith(typed) or len(typed) >= len(shown.text):
        return None
    return shown.text[len(typed) :]


def follow(running: Shown, prefix: str, suffix: str, context: tuple) -> str | None:
    """The characters typed since ``running`` (a suggestion still being written; ``text`` is what
    it has so far) was asked for, when they agree with it so far; None when the new request
    cannot be answered from it."""
    if suffix != running.suffix or context != running.context:
        return None
    if not prefix.startswith(running.prefix):
        return None
    typed = prefix[len(running.prefix) :]
    so_far = running.text
    if so_far.startswith(typed) or typed.startswith(so_far):
        return typed
    return None
