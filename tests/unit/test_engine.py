"""The engine in-process: cache reuse equals fresh computation, speculation equals plain greedy,
prompt layout, the prefix store, deadlines and typed-ahead serving."""

import random
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from engine.backends.torch_backend import TorchBackend
from engine.generate import SamplingParams, generate
from engine.jobs import Job
from engine.protocol import CompleteParams, ContextChunk, ErrorCode, ProtocolError, Sampling, parse_params
from engine.scheduler import Scheduler
from engine.service import Engine, EngineConfig, line_cut
from engine.speculative import NO_SPECULATION, SpecConfig, greedy_decode, prompt_lookup
from engine.tokenizer import Tokenizer

SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TorchBackend.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return Tokenizer.from_folder(tiny_model_dir)


def make_engine(backend, tok, **kw):
    kw.setdefault("margin", 8)
    kw.setdefault("snapshot_min_tokens", 32)
    return Engine(backend, tok, EngineConfig(**kw))


def run(engine, params, job_id=1):
    job = Job(
        job_id, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document=params.document
    )
    return engine.execute(job)


def fim(prefix, suffix, context=(), max_tokens=12, **kw):
    return CompleteParams(prefix=prefix, suffix=suffix, context=tuple(context), path="pkg/mod.py",
                          document=kw.pop("document", "doc"), sampling=Sampling(max_tokens=max_tokens, **kw))  # fmt: skip


def edits(text: str, seed: int, n: int):
    """Random cursor positions and edits: typing, backspace, deletes and jumps."""
    rng = random.Random(seed)
    cursor = len(text) // 2
    for _ in range(n):
        op = rng.choice(["type", "type", "type", "backspace", "delete", "jump", "small_jump"])
        if op == "type":
            ch = rng.choice("abcxyz_ (),:.\n")
            text, cursor = text[:cursor] + ch + text[cursor:], cursor + 1
        elif op == "backspace" and cursor > 0:
            k = rng.randint(1, 4)
            text, cursor = text[: cursor - k] + text[cursor:], max(0, cursor - k)
        elif op == "delete":
            text = text[:cursor] + text[cursor + rng.randint(1, 3) :]
        elif op == "jump":
            cursor = rng.randint(0, len(text))
        else:
            cursor = max(0, min(len(text), cursor + rng.randint(-30, 30)))
        yield text[:cursor], text[cursor:]


def test_cached_completions_equal_a_fresh_engine_after_random_edits(backend, tok):
    text = SOURCE[:900]
    context = [
        ContextChunk("pkg/util.py", SOURCE[3000:3800]),
        ContextChunk("pkg/other.py", SOURCE[5000:5400]),
    ]
    cached = make_engine(backend, tok, result_cache_entries=0)  # compare model work, not remembered results
    reused = 0
    for i, (prefix, suffix) in enumerate(edits(text, seed=1, n=16)):
        params = fim(prefix, suffix, context)
        got = run(cached, params, job_id=i)
        want = run(make_engine(backend, tok), params, job_id=i)
        assert got["text"] == want["text"], f"edit {i}"
        assert got["tokens"] == want["tokens"]
        reused += got["cache"]["reused_tokens"]
        assert (
            got["cache"]["reused_tokens"] + got["cache"]["computed_tokens"] == got["cache"]["prompt_tokens"]
        )
    totals = cached.stats()["totals"]
    assert totals["reuse_share"] > 0.5, totals  # most of each prompt came from the cache
    assert reused > 0


def test_typing_reuses_all_but_the_retokenised_tail(backend, tok):
    engine = make_engine(backend, tok)
    prefix, suffix = SOURCE[:800], SOURCE[800:1200]
    run(engine, fim(prefix, suffix))
    for ch in "result = wrap(":
        prefix += ch
        out = run(engine, fim(prefix, suffix))
        assert out["cache"]["source"] == "tip"
        assert out["cache"]["computed_tokens"] <= 3, out["cache"]


def test_returning_to_an_earlier_state_is_served_from_recent_results(backend, tok):
    engine = make_engine(backend, tok)
    a = run(engine, fim(SOURCE[:700], SOURCE[700:800]))
    run(engine, fim(SOURCE[:701], SOURCE[701:800]))  # type a character
    back = run(engine, fim(SOURCE[:700], SOURCE[700:800]))  # ... and backspace it
    assert back["served"] == "result_cache" and back["text"] == a["text"]
    assert engine.stats()["totals"]["requests"] == 2


def test_stable_context_is_shared_across_documents(backend, tok):
    engine = make_engine(backend, tok)
    context = [ContextChunk("pkg/util.py", SOURCE[3000:4500])]
    a = run(engine, fim("def a():\n    ", "\n", context, document="a"))
    b = run(engine, fim("class B:\n    ", "\n", context, document="b"))
    assert a["cache"]["reused_tokens"] == 0
    assert b["cache"]["source"] in ("snapshot", "fork")
    assert b["cache"]["reused_tokens"] >= len(tok.encode(SOURCE[3000:4500]))


def test_prefix_store_evicts_least_recently_used_under_its_budget(backend, tok):
    engine = make_engine(backend, tok, cache_mb=0.05)
    for d in range(6):
        run(engine, fim(SOURCE[d * 300 : d * 300 + 600], "", document=f"d{d}"))
    stats = engine.store.stats()
    assert stats["bytes"] <= stats["budget_bytes"]
    assert stats["evictions"] > 0


@pytest.mark.parametrize("prompt_at", [0, 700, 2500])
def test_speculative_greedy_equals_plain_greedy(backend, tok, prompt_at):
    prompt = tok.encode(SOURCE[prompt_at : prompt_at + 900])
    want = generate(backend, prompt, SamplingParams(max_new_tokens=40)).ids
    for spec in (SpecConfig(mtp_drafts=2, lookup=False), SpecConfig(mtp_drafts=0, lookup=True), SpecConfig()):
        seq = backend.new_sequence(margin=16)
        logits = backend.forward(seq, prompt, logits_to_keep=1)[-1]
        got, reason, stats = greedy_decode(backend, seq, logits, 40, spec, on_tokens=lambda new: False)
        assert got == want, spec
        assert reason == "length"
        assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    ids = np.array([1, 2, 3, 4, 5, 9, 9, 1, 2, 3])
    assert prompt_lookup(ids, 3, 2, 4, 100) == [4, 5, 9, 9]
    assert prompt_lookup(np.array([1, 2, 3, 4]), 3, 2, 4, 100) == []


def test_prefix_split_at_line_boundaries_tokenises_like_the_whole(tok):
    rng = random.Random(0)
    for _ in range(200):
        cut = rng.randint(0, len(SOURCE))
        prefix = SOURCE[:cut]
        i = line_cut(prefix)
        assert tok.encode(prefix[:i]) + tok.encode(prefix[i:]) == tok.encode(prefix)


def test_engine_prompt_follows_the_model_folders_fim_layout(backend, tok):
    engine = make_engine(backend, tok)
    params = fim("def f(", "):\n    pass\n", [ContextChunk("a.py", "X = 1\n")])
    ids, stable, dropped, arr, _ = engine.fim_ids(params, reserve=12)
    assert arr.tolist() == ids
    assert dropped == b""  # no healing unless asked
    f = tok.fim
    expected = [f.file, *tok.encode("a.py\nX = 1\n"), f.file, *tok.encode("pkg/mod.py\n"),
                f.suffix, *tok.encode("):\n    pass\n"), f.prefix, *tok.encode("def f("), f.middle]  # fmt: skip
    assert ids == expected
    assert stable == len(tok.encode("a.py\nX = 1\n")) + 1 + len(tok.encode("pkg/mod.py\n")) + 1


def test_prompt_over_the_context_length_keeps_what_is_nearest_the_cursor(backend, tok):
    engine = make_engine(backend, tok, max_context=300)
    params = fim(
        SOURCE[:4000], SOURCE[4000:8000], [ContextChunk("big.py", SOURCE[8000:12000])], max_tokens=20
    )
    ids, _, _, arr, _ = engine.fim_ids(params, reserve=20)
    assert arr.tolist() == ids
    assert len(ids) <= 280
    text = tok.decode(ids)
    assert text.endswith(SOURCE[3950:4000] + "<fim_middle>")
    assert "big.py" not in text  # context goes first when room is short


def test_deadline_ends_generation_with_what_it_has(backend, tok):
    engine = make_engine(backend, tok, spec=NO_SPECULATION)
    job = Job(1, "complete", fim(SOURCE[:600], "", max_tokens=2000), emit=lambda p: None,
              finish=lambda r, e: None, document="doc", deadline=time.monotonic() + 0.3)  # fmt: skip
    t0 = time.monotonic()
    out = engine.execute(job)
    assert out["stopped"] == "deadline"
    assert time.monotonic() - t0 < 5


def test_stop_strings_cut_the_text(backend, tok):
    engine = make_engine(backend, tok)
    free = run(engine, fim(SOURCE[:600], SOURCE[600:700], max_tokens=30))
    if len(free["text"]) < 2:
        pytest.skip("the random model stopped at once")
    stop = free["text"][1:3]
    out = run(make_engine(backend, tok), fim(SOURCE[:600], SOURCE[600:700], max_tokens=30, stop=(stop,)))
    assert out["stopped"] == "stop"
    assert out["text"] == free["text"][: free["text"].index(stop)]


class Collector:
    def __init__(self):
        self.results = {}

    def job(self, job_id, params, **kw):
        def finish(result, error, job_id=job_id):
            self.results[job_id] = (result, error)

        return Job(
            job_id, "complete", params, emit=lambda p: None, finish=finish, document=params.document, **kw
        )

    def wait(self, job_id, timeout=60):
        t0 = time.monotonic()
        while job_id not in self.results:
            assert time.monotonic() - t0 < timeout, f"job {job_id} did not finish"
            time.sleep(0.005)
        return self.results[job_id]


def test_scheduler_serves_typed_ahead_characters_from_the_last_suggestion(backend, tok):
    engine = make_engine(backend, tok, spec=NO_SPECULATION)
    sched = Scheduler(engine)
    c = Collector()
    try:
        prefix, suffix = SOURCE[:500], SOURCE[500:600]
        sched.submit(c.job(1, fim(prefix, suffix, max_tokens=16)))
        first, err = c.wait(1)
        assert err is None
        if len(first["text"]) < 2:
            pytest.skip("the random model gave no text to type along")
        typed = first["text"][:1]
        sched.submit(c.job(2, fim(prefix + typed, suffix, max_tokens=16)))
        second, err = c.wait(2)
        assert err is None
        assert second["served"] == "typed_ahead"
        assert second["text"] == first["text"][1:]
        assert engine.stats()["totals"]["requests"] == 1  # no new model work
    finally:
        sched.shutdown()


def test_scheduler_supersedes_older_requests_of_a_document(backend, tok):
    engine = make_engine(backend, tok, spec=NO_SPECULATION)
    sched = Scheduler(engine)
    c = Collector()
    try:
        for i in range(1, 6):  # different suffixes: nothing can be typed ahead
            sched.submit(c.job(i, fim(SOURCE[:900], SOURCE[900 + i : 1000], max_tokens=200)))
        errors = [c.wait(i)[1] for i in range(1, 5)]
        assert all(e is not None and e.code == ErrorCode.SUPERSEDED for e in errors)
        result, err = c.wait(5)
        assert err is None and result["served"] == "model"
    finally:
        sched.shutdown()


def test_protocol_rejects_bad_params_naming_the_field():
    with pytest.raises(ProtocolError, match="prefix must be str"):
        parse_params("complete", {"prefix": 1})
    with pytest.raises(ProtocolError, match=r"context\[0\]\.path must be str"):
        parse_params("complete", {"prefix": "", "context": [{"path": 3, "text": "x"}]})
    with pytest.raises(ProtocolError, match="unknown parameter"):
        parse_params("complete", {"prefix": "", "bogus": 1})
    with pytest.raises(ProtocolError, match="max_tokens must be a number, got a boolean"):
        parse_params("complete", {"prefix": "", "max_tokens": True})
    with pytest.raises(ProtocolError, match="exactly one of prompt or messages"):
        parse_params("generate", {})
    with pytest.raises(ProtocolError) as e:
        parse_params("frobnicate", {})
    assert e.value.code == ErrorCode.METHOD_NOT_FOUND
    p = parse_params("complete", {"prefix": "a", "stop": "\n", "deadline_ms": 50, "max_tokens": 8})
    assert p.sampling.stop == ("\n",) and p.sampling.deadline_ms == 50.0


def test_kv_bytes_held_are_close_to_the_theoretical_minimum(backend):
    c = backend.config
    seq = backend.new_sequence(margin=8)
    n = 2000
    for _ in range(0, n, 500):
        backend.forward(seq, [5] * 500)
    per_pos = 2 * c.num_kv_heads * c.head_dim * 4
    windows = [c.window_of(t) for t in c.layer_types] + [c.window_of(c.mtp.layer_type)]
    minimum = sum(n if w is None else w for w in windows) * per_pos
    held = backend.nbytes(seq)
    assert held <= 1.3 * minimum + 2 * n * c.hidden_size * 4, (held, minimum)  # + pending MTP hidden states
