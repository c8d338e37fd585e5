"""What the engine remembers of its clients' inputs: document versions (a keystroke sends only the
edit), context chunks by key, and the client's debounce spent in the engine — in the pure store
and through the real engine process."""

from __future__ import annotations

import asyncio

import pytest
from test_engine_rpc import PREFIX, EngineProcess, arun

from engine.inputs import Inputs
from engine.protocol import ErrorCode, ProtocolError, parse_params
from engine.rpc import EngineClient, EngineError

TEXT = "def f(x):\n    return x\n\nprint(f(1))\n"


def params(**kw):
    return parse_params("complete", {"document": "file:///a.py", **kw})


def test_full_text_then_edits_give_prefix_and_suffix():
    inputs = Inputs()
    p = inputs.resolve(params(doc={"version": 1, "text": TEXT}, offset=10))
    assert (p.prefix, p.suffix) == (TEXT[:10], TEXT[10:]) and p.doc is None
    p = inputs.resolve(params(doc={"version": 2, "base": 1, "edit": [10, 10, "  "]}, offset=12))
    assert p.prefix + p.suffix == TEXT[:10] + "  " + TEXT[10:] and p.prefix.endswith("  ")
    p = inputs.resolve(params(doc={"version": 2, "base": 2}, offset=0))  # nothing changed
    assert p.suffix == TEXT[:10] + "  " + TEXT[10:]


def test_an_edit_of_a_version_the_engine_does_not_hold_asks_for_the_text():
    inputs = Inputs()
    with pytest.raises(ProtocolError) as e:
        inputs.resolve(params(doc={"version": 2, "base": 1, "edit": [0, 0, "x"]}, offset=0))
    assert e.value.code == ErrorCode.UNKNOWN_DOCUMENT and "send the full text" in e.value.message
    inputs.resolve(params(doc={"version": 1, "text": TEXT}, offset=0))
    with pytest.raises(ProtocolError) as e:
        inputs.resolve(params(doc={"version": 3, "base": 2}, offset=0))
    assert e.value.code == ErrorCode.UNKNOWN_DOCUMENT and "version 1" in e.value.message


def test_bad_offsets_and_edits_name_the_problem():
    inputs = Inputs()
    with pytest.raises(ProtocolError, match="offset 999 is past the end"):
        inputs.resolve(params(doc={"version": 1, "text": TEXT}, offset=999))
    with pytest.raises(ProtocolError, match=r"edit \[0, 500\) is past the end"):
        inputs.resolve(params(doc={"version": 2, "base": 1, "edit": [0, 500, ""]}, offset=0))
    for bad, match in [
        ({"doc": {"version": 1, "text": TEXT}, "offset": 1, "prefix": "x"}, "not both|prefix and suffix"),
        ({"doc": {"version": 1, "text": TEXT}}, "offset must be int"),
        ({"doc": {"version": 1, "base": 0, "edit": [3, 1, ""]}, "offset": 0}, "start <= end"),
        ({"doc": {"version": 1, "text": "a", "base": 0}, "offset": 0}, "not both"),
        ({"offset": 3, "prefix": ""}, "offset needs doc"),
        ({"prefix": "", "delay_ms": -1}, "delay_ms must be in"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            parse_params("complete", {"document": "d", **bad})


def test_a_context_list_is_named_by_its_ref_once_sent():
    inputs = Inputs()
    ctx = [{"path": "a.py", "key": "ka", "text": "A = 1\n"}, {"path": "b.py", "key": "kb", "text": "B\n"}]
    inputs.resolve(params(prefix="x", context=ctx, context_ref="r1"))
    p = inputs.resolve(params(prefix="xy", context_ref="r1"))
    assert [(c.path, c.text) for c in p.context] == [
        ("a.py", "A = 1\n"),
        ("b.py", "B\n"),
    ] and p.context_ref is None
    with pytest.raises(ProtocolError) as e:
        inputs.resolve(params(prefix="x", context_ref="r2"))
    assert e.value.code == ErrorCode.UNKNOWN_CONTEXT_KEY


def test_chunk_texts_are_kept_by_key_and_evicted_by_size():
    inputs = Inputs(chunk_entries=2)
    ctx = [{"path": "a.py", "key": "ka", "text": "A = 1\n"}]
    inputs.resolve(params(prefix="x", context=ctx))
    p = inputs.resolve(params(prefix="x", context=[{"path": "a.py", "key": "ka"}]))
    assert p.context[0].text == "A = 1\n"
    for k in ("kb", "kc"):
        inputs.resolve(params(prefix="x", context=[{"path": "b.py", "key": k, "text": "B"}]))
    with pytest.raises(ProtocolError) as e:
        inputs.resolve(params(prefix="x", context=[{"path": "a.py", "key": "ka"}]))
    assert e.value.code == ErrorCode.UNKNOWN_CONTEXT_KEY


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("sock")
    d.chmod(0o700)
    e = EngineProcess(tiny_model_dir, d / "inputs.sock")
    yield e
    e.stop()


def test_deltas_give_the_same_completion_as_full_text(engine):
    text = PREFIX + "\n\nprint(wrap('x'))\n"
    cursor = len(PREFIX)

    async def go():
        c = await EngineClient.connect(engine.sock)
        try:
            common = {"document": "file:///w.py", "max_tokens": 8}
            full = await c.request("complete", {"prefix": text[:cursor], "suffix": text[cursor:], **common})
            await c.request("complete", {"doc": {"version": 1, "text": text}, "offset": cursor, **common})
            sent = c.bytes_sent
            delta = await c.request("complete", {"doc": {"version": 2, "base": 1, "edit": [cursor, cursor, "f"]},
                                                 "offset": cursor + 1, **common})  # fmt: skip
            delta_bytes = c.bytes_sent - sent
            plain = await c.request(
                "complete", {"prefix": text[:cursor] + "f", "suffix": text[cursor:], **common}
            )
            with pytest.raises(EngineError) as e:
                await c.request("complete", {"doc": {"version": 9, "base": 7}, "offset": 0, **common})
            return full, delta, plain, delta_bytes, e.value.code
        finally:
            await c.close()

    full, delta, plain, delta_bytes, code = arun(go())
    assert full["text"] and delta["text"] == plain["text"]
    assert delta_bytes < 200  # the edit, not the document
    assert code == ErrorCode.UNKNOWN_DOCUMENT


def test_debounce_in_the_engine_is_superseded_by_the_next_keystroke(engine):
    async def go():
        c = await EngineClient.connect(engine.sock)
        try:
            common = {"suffix": "\n", "max_tokens": 4, "document": "file:///deb.py"}
            first = asyncio.ensure_future(
                c.request("complete", {"prefix": PREFIX, "delay_ms": 2000, **common})
            )
            await asyncio.sleep(0.2)
            second = await c.request("complete", {"prefix": PREFIX + "f", **common})
            with pytest.raises(EngineError) as e:
                await first
            return second, e.value.code
        finally:
            await c.close()

    second, code = arun(go())
    assert code == ErrorCode.SUPERSEDED and second["served"] in ("model", "result_cache")
