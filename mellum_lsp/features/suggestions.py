"""The last suggestion shown per document, and serving its rest while the user types along it.

Pure. Offers `Shown` and `typed_along(shown, prefix, suffix)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shown:
    """A suggestion as shown: where (the text around the cursor) and what."""

    prefix: str
    suffix: str
    text: str
    id: str = ""


def typed_along(shown: Shown | None, prefix: str, suffix: str) -> str | None:
    """What is left of `shown` when the document now reads `prefix` | `suffix`, or None.

    The user typed along when the new prefix is the old one plus characters the suggestion
    starts with and the text after the cursor did not change. The same position gives the same
    suggestion; typing all of it (or anything else) gives None.
    """
    if shown is None or not shown.text or suffix != shown.suffix:
        return None
    if len(prefix) < len(shown.prefix) or not prefix.startswith(shown.prefix):
        return None
    typed = prefix[len(shown.prefix) :]
    if not shown.text.startswith(typed) or len(typed) >= len(shown.text):
        return None
    return shown.text[len(typed) :]
