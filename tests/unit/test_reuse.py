"""The engine's rule for serving a suggestion without the model: typing along it."""

from __future__ import annotations

from engine.reuse import Shown, follow, typed_along

CTX = (("a.py", "k1"),)
SHOWN = Shown(prefix="x = comp", suffix="\nprint(x)\n", context=CTX, text="ute(a, b)")


def test_typing_the_start_serves_the_rest():
    assert typed_along(SHOWN, "x = compu", SHOWN.suffix, CTX) == "te(a, b)"
    assert typed_along(SHOWN, "x = compute(a, ", SHOWN.suffix, CTX) == "b)"


def test_same_position_gives_the_same_suggestion():
    assert typed_along(SHOWN, "x = comp", SHOWN.suffix, CTX) == "ute(a, b)"


def test_anything_else_needs_the_model():
    assert typed_along(SHOWN, "x = compa", SHOWN.suffix, CTX) is None  # typed something else
    assert typed_along(SHOWN, "x = com", SHOWN.suffix, CTX) is None  # backspace
    assert typed_along(SHOWN, "x = compute(a, b)", SHOWN.suffix, CTX) is None  # typed all of it
    assert typed_along(SHOWN, "x = compu", "\nprint(y)\n", CTX) is None  # the text after the cursor changed
    assert typed_along(SHOWN, "x = compu", SHOWN.suffix, ()) is None  # other repository context
    assert typed_along(None, "x", "", ()) is None
    assert typed_along(Shown("a", "", (), ""), "a", "", ()) is None


def test_follow_a_suggestion_still_being_written():
    running = Shown(prefix="x = comp", suffix="", context=CTX, text="ut")
    assert follow(running, "x = compu", "", CTX) == "u"  # agrees with what it has so far
    assert follow(running, "x = compute", "", CTX) == "ute"  # ahead of it: may still agree
    assert follow(running, "x = compa", "", CTX) is None
    assert follow(running, "x = co", "", CTX) is None
    assert follow(running, "x = compu", "!", CTX) is None
    assert follow(running, "x = compu", "", ()) is None
