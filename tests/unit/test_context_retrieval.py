"""Tokenizer, windows and BM25 (mellum_lsp.context.retrieval), incremental vs bulk."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from mellum_lsp.context.retrieval import Bm25Index, make_windows, tokenize, window_spans


def test_tokenize_splits_identifiers() -> None:
    assert tokenize("getUserName(user_id)") == ["getusername", "get", "user", "name", "user_id", "user", "id"]
    assert tokenize("HTTPServer x") == ["httpserver", "http", "server"]  # one-letter names are dropped
    assert tokenize("return self.value if x else None") == ["value"]  # keywords are dropped
    assert tokenize("3.14 + 42") == []


def test_window_spans_cover_every_line() -> None:
    assert window_spans(5, 20, 10) == [(0, 5)]
    assert window_spans(20, 20, 10) == [(0, 20)]
    assert window_spans(25, 20, 10) == [(0, 20), (10, 25)]
    assert window_spans(41, 20, 10) == [(0, 20), (10, 30), (20, 40), (30, 41)]
    for n in range(1, 100):
        spans = window_spans(n, 20, 10)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(b[0] <= a[1] for a, b in zip(spans, spans[1:], strict=False))


def test_make_windows_counts() -> None:
    text = "\n".join(f"alpha_{i} beta" for i in range(25))
    fw = make_windows(text, 20, 10)
    assert fw.spans == ((0, 20), (10, 25))
    assert fw.lengths == (60, 45)  # alpha_i, alpha, beta per line
    df = dict(zip(fw.terms, fw.window_df().tolist(), strict=True))
    assert df["beta"] == 2 and df["alpha_0"] == 1 and df["alpha_15"] == 2


DOCS = {
    "billing.py": "def compute_invoice_total(invoice):\n    return sum(line.amount for line in invoice.lines)\n",
    "users.py": "def load_user_profile(user_id):\n    return db.fetch_profile(user_id)\n",
    "render.ts": "export function renderWidget(widget) {\n  return widget.template.render();\n}\n",
    "mixed.go": "func ParseConfig(path string) Config {\n\treturn readConfigFile(path)\n}\n",
}


def _index(docs: dict[str, str]) -> Bm25Index:
    bm = Bm25Index()
    bm.bulk_load((doc, make_windows(text)) for doc, text in docs.items())
    return bm


def test_bm25_returns_the_relevant_window() -> None:
    bm = _index(DOCS)
    for query, expected in [
        ("total = compute_invoice_total(invoice)", "billing.py"),
        ("profile = load_user_profile(current_user_id)", "users.py"),
        ("renderWidget(myWidget)", "render.ts"),
        ("cfg := ParseConfig(configPath)", "mixed.go"),
    ]:
        hits = bm.search(tokenize(query), 3)
        assert hits[0].doc == expected, (query, hits)
        assert all(h.score > 0 for h in hits)
    assert bm.search(tokenize("nothing matches zzz"), 3) == []


def test_search_exclusions_and_ties() -> None:
    docs = {f"f{i}.py": "shared_name = shared_name + 1\n" for i in range(5)}
    bm = _index(docs)
    hits = bm.search(["shared_name"], 3)
    assert [h.doc for h in hits] == ["f0.py", "f1.py", "f2.py"]  # equal scores: ordered by path
    assert "f0.py" not in {h.doc for h in bm.search(["shared_name"], 10, exclude_doc="f0.py")}
    long_doc = "\n".join(f"needle_{i // 10}" for i in range(40))
    bm = _index({"a.py": long_doc})
    kept = bm.search(
        ["needle_0", "needle_1", "needle_2", "needle_3"], 10, exclude_doc="a.py", exclude_lines=(0, 5)
    )
    assert all(h.start >= 5 for h in kept) and kept


def _state(bm: Bm25Index, queries: list[list[str]]):
    return bm.stats(), [bm.scores(q) for q in queries]


WORDS = ["alpha", "beta", "gamma", "delta_value", "fooBar", "parse_config", "renderTree", "x_y_z", "Query"]
texts = st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join), max_size=35).map(
    "\n".join
)
operations = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 5), texts), min_size=1, max_size=25
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.dictionaries(st.integers(0, 5), texts, max_size=6), ops=operations, compact=st.booleans())
def test_incremental_updates_equal_a_rebuild(initial: dict[int, str], ops, compact: bool) -> None:
    docs = {f"d{k}.py": v for k, v in initial.items()}
    bm = _index(docs)
    for op, k, text in ops:
        doc = f"d{k}.py"
        if op == "add":
            docs[doc] = text
            bm.add(doc, make_windows(text))
        else:
            docs.pop(doc, None)
            bm.remove(doc)
    if compact:
        bm.compact()
    queries = [
        tokenize(q) for q in ["alpha beta", "fooBar parse_config", "delta_value renderTree Query", "zzz"]
    ]
    assert _state(bm, queries) == _state(_index(docs), queries)
    fresh = Bm25Index()
    for doc, text in docs.items():
        fresh.add(doc, make_windows(text))
    assert _state(fresh, queries) == _state(_index(docs), queries)


def test_compaction_keeps_results() -> None:
    bm = _index(DOCS)
    for i in range(30):
        bm.add("billing.py", make_windows(DOCS["billing.py"] + f"\n# edit {i}\n"))
    query = tokenize("compute_invoice_total widget profile")
    before = bm.search(query, 10)
    bm.compact()
    assert bm.search(query, 10) == before
    assert bm.stats()[0] == sum(len(make_windows(t).spans) for t in DOCS.values())
