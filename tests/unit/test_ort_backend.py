"""``OrtBackend`` against ``TorchBackend`` on the same tiny checkpoint, and its runtime without torch."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hf_reference import FULL, SLIDING
from test_export_fixtures import export_once

from engine.backends.ort_backend import CacheError, OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.checkpoint import load_model
from engine.generate import SamplingParams, generate
from engine.model.kv import CacheError as TorchCacheError

TOL = 1e-3
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """exports(name, *cli_args) -> the folder ``mellum-lsp export`` wrote (once per test run)."""
    return lambda *args, **overrides: export_once(checkpoints, tmp_path_factory, *args, **overrides)


@pytest.fixture(scope="module")
def pair(exports, checkpoints):
    return OrtBackend.load(exports()), TorchBackend(load_model(checkpoints("default")))


def _ids(n, seed=0):
    return np.random.default_rng(seed).integers(0, 160, n).tolist()


def _step(a, b, sa, sb, ids, keep=1):
    x, y = a.forward(sa, ids, keep), b.forward(sb, ids, keep)
    assert x.shape == y.shape and x.dtype == np.float32
    return float(np.abs(x - y).max())


def test_prefill_decode_across_the_window_and_rollback_match_torch(pair):
    ort_b, torch_b = pair
    so, st = ort_b.new_sequence(margin=4), torch_b.new_sequence(margin=4)
    ids = _ids(200)
    worst = _step(ort_b, torch_b, so, st, ids[:5], keep=0)  # shorter than the window of 8
    for t in ids[5:100]:  # token by token, far across the window: the sliding layers trim
        worst = max(worst, _step(ort_b, torch_b, so, st, [t]))
    assert so.state.groups["sliding"].start > 0
    assert ort_b.lowest_truncation(so) == torch_b.lowest_truncation(st) > 0
    # roll back inside the margin and continue, then a multi-token chunk
    n = ort_b.lowest_truncation(so) + 1
    ort_b.truncate(so, n)
    torch_b.truncate(st, n)
    assert len(so.ids) == n
    for t in ids[100:110]:
        worst = max(worst, _step(ort_b, torch_b, so, st, [t]))
    worst = max(worst, _step(ort_b, torch_b, so, st, ids[110:130], keep=3))
    assert worst <= TOL, worst
    # a rollback past the margin is refused by both, and changes nothing
    n = ort_b.lowest_truncation(so) - 1
    with pytest.raises(CacheError, match="margin"):
        ort_b.truncate(so, n)
    with pytest.raises(TorchCacheError):
        torch_b.truncate(st, n)
    assert _step(ort_b, torch_b, so, st, [7]) <= TOL


def test_long_prefill_in_one_chunk_matches_torch(pair):
    ort_b, torch_b = pair
    so, st = ort_b.new_sequence(), torch_b.new_sequence()
    assert _step(ort_b, torch_b, so, st, _ids(300, seed=1), keep=0) <= TOL
    assert _step(ort_b, torch_b, so, st, [3]) <= TOL


def test_greedy_generation_is_identical_for_32_tokens(pair):
    ort_b, torch_b = pair
    prompt = _ids(11, seed=2)
    params = SamplingParams(max_new_tokens=32)
    a, b = generate(ort_b, prompt, params), generate(torch_b, prompt, params)
    assert a.ids == b.ids and len(a.ids) == 32
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-3)


def test_mtp_drafts_equal_torch(pair):
    ort_b, torch_b = pair
    assert ort_b.has_mtp and torch_b.has_mtp
    so, st = ort_b.new_sequence(margin=4), torch_b.new_sequence(margin=4)
    ids = _ids(120, seed=3)
    _step(ort_b, torch_b, so, st, ids[:20])
    assert ort_b.draft(so, ids[20], 4) == torch_b.draft(st, ids[20], 4)
    for t in ids[20:90]:  # past the window: the pending hidden states are bounded
        _step(ort_b, torch_b, so, st, [t])
        if t % 7 == 0:
            assert ort_b.draft(so, t, 3) == torch_b.draft(st, t, 3)
    ort_b.truncate(so, 85)
    torch_b.truncate(st, 85)
    assert ort_b.draft(so, 5, 5) == torch_b.draft(st, 5, 5)
    _step(ort_b, torch_b, so, st, ids[90:95])
    assert ort_b.draft(so, 9, 2) == torch_b.draft(st, 9, 2)
    assert ort_b.draft(so, 9, 0) == [] and ort_b.draft(ort_b.new_sequence(), 9, 2) == []


def test_fork_is_independent_and_compact_keeps_the_state(pair):
    ort_b, _ = pair
    seq = ort_b.new_sequence(margin=4)
    ids = _ids(90, seed=4)
    ort_b.forward(seq, ids[:80])
    copy = ort_b.fork(seq)
    ort_b.compact(copy)
    assert ort_b.nbytes(copy) < ort_b.nbytes(seq)
    a = ort_b.forward(seq, ids[80:])
    ort_b.forward(copy, [1, 2, 3])  # diverge
    ort_b.truncate(copy, 80)
    b = ort_b.forward(copy, ids[80:])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert copy.ids == seq.ids


def test_runtime_imports_and_runs_without_torch(exports):
    out = exports()
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["export"] = None
        from engine.backends import load_backend
        backend = load_backend({str(out)!r}, "auto", threads=1)
        seq = backend.new_sequence()
        logits = backend.forward(seq, [1, 2, 3, 4])
        assert logits.shape == (1, backend.config.vocab_size), logits.shape
        assert len(backend.draft(seq, 5, 2)) == 2
        assert not any(m == "torch" or m.startswith(("torch.", "export")) for m in sys.modules
                       if sys.modules[m] is not None)
        print(type(backend).__name__)
        """
    )
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "OrtBackend"


def test_tied_int8_export_prefills_decodes_rolls_back_and_drafts(exports, checkpoints):
    """The embedded model's layout: a quantised embedding sharing the lm_head's blocks, computed rotary."""
    tied = dict(tie_word_embeddings=True)
    ort_b = OrtBackend.load(exports("tied", "--quant", "int8", **tied))
    torch_b = TorchBackend(load_model(checkpoints("tied", **tied)))
    so, st = ort_b.new_sequence(margin=4), torch_b.new_sequence(margin=4)
    ids = _ids(60, seed=6)
    a, b = ort_b.forward(so, ids, 0), torch_b.forward(st, ids, 0)
    agree = list(a.argmax(-1) == b.argmax(-1))
    for t in _ids(30, seed=7):  # far past the window of 8
        x, y = ort_b.forward(so, [t]), torch_b.forward(st, [t])
        agree.append(x.argmax() == y.argmax())
    assert np.mean(agree) >= 0.8, np.mean(agree)  # int8 on a random model; the real one agrees >99 %
    drafts = ort_b.draft(so, 5, 3)
    assert len(drafts) == 3 and all(0 <= d < ort_b.config.vocab_size for d in drafts)
    n = len(so.ids)
    before = ort_b.forward(so, [9, 10, 11], 3)
    ort_b.truncate(so, n)
    np.testing.assert_allclose(ort_b.forward(so, [9, 10, 11], 3), before, atol=1e-5)


@pytest.mark.parametrize("margin", [4, 40])
def test_random_appends_and_rollbacks_match_torch(pair, margin):
    """Chunks, single tokens and rollbacks (to the oldest servable length, too) in a seeded random order."""
    ort_b, torch_b = pair
    rng = np.random.default_rng(margin)
    so, st = ort_b.new_sequence(margin=margin), torch_b.new_sequence(margin=margin)
    worst = 0.0
    for _ in range(60):
        action = rng.random()
        if action < 0.25 and len(so.ids) > 0:
            low = ort_b.lowest_truncation(so)
            assert low == torch_b.lowest_truncation(st)
            n = int(rng.integers(low, len(so.ids) + 1)) if rng.random() < 0.7 else low
            ort_b.truncate(so, n)
            torch_b.truncate(st, n)
        elif action < 0.35 and len(so.ids) > 0:  # as speculation does: draft, then verify
            drafts = ort_b.draft(so, 3, 3)
            assert drafts == torch_b.draft(st, 3, 3)
            worst = max(worst, _step(ort_b, torch_b, so, st, [3, *drafts], keep=4))
        else:
            k = int(rng.choice([1, 1, 1, 2, 5, 13, 40]))
            worst = max(worst, _step(ort_b, torch_b, so, st, rng.integers(0, 160, k).tolist(), keep=k))
    assert so.ids == st.ids and len(so.ids) > 50
    assert worst <= TOL, worst


def test_other_layouts_full_attention_mtp_dense_mlp_no_topk_renormalisation(exports, checkpoints):
    """Full/sliding interleaved, an MTP layer with full attention and a dense MLP, top-3 unnormalised."""
    overrides = dict(
        layer_types=[FULL, SLIDING, FULL, SLIDING],
        mtp_layer_types=[FULL],
        mtp_mlp_layer_types=["dense"],
        norm_topk_prob=False,
        num_experts_per_tok=3,
    )
    out = exports("variant", **overrides)
    ort_b, torch_b = OrtBackend.load(out), TorchBackend(load_model(checkpoints("variant", **overrides)))
    so, st = ort_b.new_sequence(margin=4), torch_b.new_sequence(margin=4)
    ids = _ids(120, seed=5)
    worst = _step(ort_b, torch_b, so, st, ids[:30], keep=0)
    for t in ids[30:110]:
        worst = max(worst, _step(ort_b, torch_b, so, st, [t]))
        if t % 9 == 0:
            assert ort_b.draft(so, t, 3) == torch_b.draft(st, t, 3)
    assert worst <= TOL, worst
