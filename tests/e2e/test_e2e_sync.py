"""Incremental document sync through the real server under each position encoding: random
edits with astral-plane characters, CJK and CRLF keep the server's text equal to the client's."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_lsp import RawLsp

NO_ENGINE = {"mellum": {"model": {"path": "/nonexistent/model"}, "telemetry": {"enabled": False}}}
_CODEC = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}
_uris = itertools.count()


@pytest.fixture(scope="module", params=["utf-16", "utf-8", "utf-32"])
def server(request, tmp_path_factory):
    encoding = request.param
    lsp = RawLsp({"XDG_STATE_HOME": str(tmp_path_factory.mktemp("state"))})
    offered = None if encoding == "utf-16" else [encoding, "utf-16"]
    result = lsp.initialize(encodings=offered, options=NO_ENGINE)["result"]
    assert result["capabilities"]["positionEncoding"] == encoding
    yield lsp, encoding
    lsp.close()


def position(text: str, offset: int, encoding: str) -> dict:
    """The client's LSP position of `offset`, counted from the encoded bytes of the line."""
    codec, width = _CODEC[encoding]
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    line = max(i for i, s in enumerate(starts) if s <= offset)
    return {
        "line": line,
        "character": len(text[starts[line] : offset].encode(codec, "surrogatepass")) // width,
    }


PIECES = ["a", "z", " ", "\n", "\r\n", "\r", "é", "中", "語", "😀", "\U0001f9ea", "\U0001d11e", "\t"]
text_st = st.lists(st.sampled_from(PIECES), max_size=16).map("".join)


@st.composite
def sessions(draw):
    text = draw(text_st)
    steps, current = [], text
    for _ in range(draw(st.integers(1, 8))):
        spots = [i for i in range(len(current) + 1) if current[i - 1 : i + 1] != "\r\n"]
        a = draw(st.sampled_from(spots))
        b = draw(st.sampled_from([s for s in spots if s >= a]))
        new = draw(text_st)
        steps.append((a, b, new, draw(st.booleans())))
        current = current[:a] + new + current[b:]
    return text, steps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=sessions())
def test_random_incremental_edits(server, case):
    lsp, encoding = server
    text, steps = case
    uri = f"file:///tmp/mellum-sync/{next(_uris)}.py"
    lsp.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 0, "text": text}},
    )
    client, batch, version = text, [], 0
    for a, b, new, flush in steps:
        rng = {"start": position(client, a, encoding), "end": position(client, b, encoding)}
        batch.append({"range": rng, "text": new})
        client = client[:a] + new + client[b:]
        if flush:
            version += 1
            lsp.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": version}, "contentChanges": batch},
            )
            batch = []
    if batch:
        version += 1
        lsp.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": batch},
        )
    doc = lsp.request("mellum/document", {"uri": uri})["result"]
    assert doc["text"] == client and doc["version"] == version
    lsp.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
