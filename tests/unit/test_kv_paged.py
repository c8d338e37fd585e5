"""Paged KV with copy-on-write: forks share the full layers' pages, writes never reach another
sequence, and cached logits equal fresh ones after random edits, forks and truncations (both
backends; ONNX Runtime on a paged fp16-KV export of a tiny checkpoint)."""

import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_fixtures import export_once

from engine.backends.ort_backend import OrtBackend
from engine.backends.ort_kv import PagedGroup
from engine.backends.torch_backend import TorchBackend
from engine.checkpoint import load_model
from engine.jobs import Job
from engine.model.kv import CacheError
from engine.model.paged import PagedKV
from engine.protocol import CompleteParams, ContextChunk, Sampling
from engine.service import Engine, EngineConfig
from engine.tokenizer import Tokenizer

SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()


def _pages(max_segments=2):
    return PagedKV(
        layers=2, heads=2, dim=4, alloc=lambda shape: np.zeros(shape, np.float32), max_segments=max_segments
    )


def _append(kv, rows):
    """Append ``rows`` positions whose every value is its position (so reads show what is held)."""
    start = kv.length
    kv.reserve(rows)
    kv.rows(rows)[...] = np.arange(start, start + rows, dtype=np.float32)[:, None]
    kv.advance(rows)


def _held(kv):
    """The positions held, as read back through the segments."""
    return (
        np.concatenate([slab.a[0, 0, 0, 0, :n, 0] for slab, n in kv.views()]) if kv.segments else np.zeros(0)
    )


def test_fork_shares_pages_and_writes_never_reach_the_other_sequence():
    parent = _pages()
    _append(parent, 300)
    child = parent.fork()
    assert [s.slab for s in child.segments] == [s.slab for s in parent.segments]  # shared, nothing copied
    assert all(s.slab.frozen for s in parent.segments)
    before = _held(parent).copy()
    child.truncate(280)
    _append(child, 150)  # diverges at 280: a new segment, the shared page stays as it was
    _append(parent, 40)
    np.testing.assert_array_equal(_held(parent), np.arange(340))
    np.testing.assert_array_equal(_held(child), np.arange(430))
    np.testing.assert_array_equal(_held(parent)[:300], before)
    assert len(child.segments) == 2 and child.segments[0].slab is parent.segments[0].slab


def test_segments_are_bounded_merged_reopened_and_counted_once():
    kv = _pages(max_segments=2)
    _append(kv, 100)
    keep = [kv.fork() for _ in range(3)]  # each fork freezes the last page: appends open a new one
    _append(kv, 10)
    keep.append(kv.fork())
    _append(kv, 10)  # a third segment would be needed: the trailing ones are merged into one
    assert len(kv.segments) == 2 and kv.segments[0].n == 100 and kv.segments[1].n == 20
    np.testing.assert_array_equal(_held(kv), np.arange(120))
    # a shared page counts once, split among its holders
    first = kv.segments[0].slab
    assert kv.nbytes() < first.a.nbytes
    total = sum(k.nbytes() for k in [kv, *keep])
    assert total <= sum({id(s.slab): s.slab.a.nbytes for k in [kv, *keep] for s in k.segments}.values()) + 4
    # when the other holders are gone, a frozen page is ours alone again: appends go in place
    solo = _pages()
    _append(solo, 50)
    other = solo.fork()
    del other, keep
    _append(solo, 5)
    assert len(solo.segments) == 1 and not solo.segments[0].slab.frozen


def test_truncating_deep_into_a_shared_page_copies_only_what_is_kept():
    kv = _pages()
    _append(kv, 1000)
    child = kv.fork()
    child.truncate(
        100
    )  # a view of under half of its page: copied out, so attention reads 100 rows, not 1000+
    assert child.segments[0].slab is not kv.segments[0].slab and child.segments[0].slab.capacity < 500
    np.testing.assert_array_equal(_held(child), np.arange(100))
    np.testing.assert_array_equal(_held(kv), np.arange(1000))


# -- the backends ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_backend(checkpoints, tmp_path_factory):
    return OrtBackend.load(export_once(checkpoints, tmp_path_factory))  # paged, fp16 full-layer KV


@pytest.fixture(scope="module")
def torch_backend(checkpoints):
    return TorchBackend(load_model(checkpoints("default")))  # fp16 full-layer KV


def _ids(n, rng):
    return rng.integers(0, 160, n).tolist()


@pytest.mark.parametrize("kind", ["ort", "torch"])
def test_cached_logits_equal_fresh_after_random_appends_forks_and_truncations(
    kind, ort_backend, torch_backend
):
    backend = ort_backend if kind == "ort" else torch_backend
    rng = np.random.default_rng(7)
    live = [backend.new_sequence(margin=6)]
    worst, checks = 0.0, 0
    for _ in range(70):
        seq = live[int(rng.integers(len(live)))]
        action = rng.random()
        if action < 0.2 and len(live) < 6:
            live.append(backend.fork(seq))
        elif action < 0.35 and len(seq.ids) > 1:
            low = backend.lowest_truncation(seq)
            backend.truncate(seq, int(rng.integers(max(low, 1), len(seq.ids) + 1)))
        elif action < 0.4 and len(live) > 1:
            live.remove(seq)  # dropped: its pages may open again for their other holder
        else:
            new = _ids(int(rng.choice([1, 1, 2, 5, 17, 40])), rng)
            got = backend.forward(seq, new, logits_to_keep=len(new))
            fresh = backend.new_sequence(margin=6)
            want = backend.forward(fresh, list(seq.ids), logits_to_keep=len(new))
            worst = max(worst, float(np.abs(got - want).max()))
            checks += 1
    assert checks > 30 and len(live) > 1
    assert worst <= 1e-3, worst  # fp16 keys: one ulp of rounding can differ between two chunkings


@pytest.mark.parametrize("kind", ["ort", "torch"])
def test_a_forked_sequence_never_changes_its_parent(kind, ort_backend, torch_backend):
    backend = ort_backend if kind == "ort" else torch_backend
    rng = np.random.default_rng(3)
    parent = backend.new_sequence(margin=6)
    backend.forward(parent, _ids(90, rng))
    probe = _ids(4, rng)
    before = backend.forward(backend.fork(parent), probe, 4)
    child = backend.fork(parent)
    for _ in range(5):  # the child rolls back into the shared part, rewrites it, grows past it
        backend.truncate(child, max(backend.lowest_truncation(child), len(child.ids) - 7))
        backend.forward(child, _ids(int(rng.integers(1, 30)), rng))
    np.testing.assert_array_equal(backend.forward(backend.fork(parent), probe, 4), before)
    # and the parent goes on as if the child had never been
    after = backend.forward(parent, probe, 4)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_fork_copies_no_full_layer_rows_on_either_backend(ort_backend, torch_backend):
    seq = ort_backend.new_sequence()
    ort_backend.forward(seq, list(range(100)))
    child = ort_backend.fork(seq)
    full, copy = seq.state.groups["full"], child.state.groups["full"]
    assert isinstance(full, PagedGroup)
    assert all(np.shares_memory(a.a, b.a) for (a, _), (b, _) in zip(full.views(), copy.views(), strict=True))
    tseq = torch_backend.new_sequence()
    torch_backend.forward(tseq, list(range(100)))
    tchild = torch_backend.fork(tseq)
    for a, b in zip(tseq.state.cache.layers, tchild.state.cache.layers, strict=True):
        if a.window is None:
            assert a.pages.segments[0].slab.a.data_ptr() == b.pages.segments[0].slab.a.data_ptr()
        else:
            assert a.k.data_ptr() != b.k.data_ptr()  # sliding layers (window + margin rows) are copied


@pytest.mark.parametrize("kind", ["ort", "torch"])
def test_a_fork_keeps_the_sliding_layers_rollback_margin(kind, ort_backend, torch_backend):
    backend = ort_backend if kind == "ort" else torch_backend
    seq = backend.new_sequence(margin=5)
    backend.forward(seq, list(range(120)))
    child = backend.fork(seq)
    low = backend.lowest_truncation(child)
    assert low == backend.lowest_truncation(seq) > 0
    backend.truncate(child, low)  # inside the margin: served
    with pytest.raises(CacheError, match="margin"):
        backend.truncate(backend.fork(seq), low - 1)
    assert len(seq.ids) == 120


def test_kv_dtype_is_what_full_layers_store(ort_backend, torch_backend, checkpoints):
    seq = ort_backend.new_sequence()
    ort_backend.forward(seq, list(range(30)))
    assert seq.state.groups["full"].views()[0][0].a.dtype == np.float16
    assert seq.state.groups["sliding"].a.dtype == np.float32  # window + margin rows: the compute dtype
    tseq = torch_backend.new_sequence()
    torch_backend.forward(tseq, list(range(30)))
    full = [layer for layer in tseq.state.cache.layers if layer.window is None][0]
    assert full.pages.segments[0].slab.a.dtype == torch.float16
    with pytest.raises(ValueError, match="re-export"):
        OrtBackend.load(ort_backend.model_dir, kv_dtype="fp32")


def _job(params, job_id):
    return Job(
        job_id, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document=params.document
    )


def test_engine_on_paged_onnx_runtime_serves_edits_and_documents_as_a_fresh_engine(
    tiny_model_dir, tmp_path_factory
):
    from export.cli import main

    out = tmp_path_factory.mktemp("tiny-paged") / "export"
    assert main(["--model", str(tiny_model_dir), "--out", str(out)]) == 0
    backend, tok = OrtBackend.load(out), Tokenizer.from_folder(tiny_model_dir)

    def engine():
        return Engine(backend, tok, EngineConfig(margin=8, snapshot_min_tokens=32, result_cache_entries=0))

    cached = engine()
    context = [ContextChunk("pkg/util.py", SOURCE[3000:3800])]
    rnd = random.Random(5)
    text = SOURCE[:900]
    sources = set()
    for i in range(14):
        cursor = rnd.randint(200, len(text))
        document = rnd.choice(["a", "b", "c"])  # switching documents forks the shared context
        params = CompleteParams(text[:cursor], text[cursor:], tuple(context), "pkg/mod.py", document,
                                Sampling(max_tokens=8))  # fmt: skip
        got = cached.execute(_job(params, i))
        want = engine().execute(_job(params, i))
        assert got["text"] == want["text"], i
        sources.add(got["cache"]["source"])
    assert {"snapshot", "tip"} & sources
