"""Serving the rest of a shown suggestion while the user types along it."""

from __future__ import annotations

from mellum_lsp.features.suggestions import Shown, typed_along

SHOWN = Shown(prefix="x = comp", suffix="\nprint(x)\n", text="ute(a, b)")


def test_typing_the_start_serves_the_rest():
    assert typed_along(SHOWN, "x = compu", SHOWN.suffix) == "te(a, b)"
    assert typed_along(SHOWN, "x = compute(a, ", SHOWN.suffix) == "b)"


def test_same_position_gives_the_same_suggestion():
    assert typed_along(SHOWN, "x = comp", SHOWN.suffix) == "ute(a, b)"


def test_anything_else_needs_the_model():
    assert typed_along(SHOWN, "x = compa", SHOWN.suffix) is None  # typed something else
    assert typed_along(SHOWN, "x = com", SHOWN.suffix) is None  # backspace
    assert typed_along(SHOWN, "x = compute(a, b)", SHOWN.suffix) is None  # typed all of it
    assert typed_along(SHOWN, "x = compu", "\nprint(y)\n") is None  # the text after the cursor changed
    assert typed_along(None, "x", "") is None
    assert typed_along(Shown("a", "", ""), "a", "") is None
