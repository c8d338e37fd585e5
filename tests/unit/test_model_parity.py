"""Our Mellum against transformers' MellumForCausalLM and MtpModel on tiny random checkpoints."""

import pytest
import torch
from hf_reference import VARIANTS, hf_model, hf_mtp

from engine.checkpoint import load_model
from engine.model.kv import CacheError

TOL = 1e-4


def _ids(n, vocab=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


@pytest.fixture(params=list(VARIANTS), scope="module")
def pair(request, checkpoints):
    folder = checkpoints(request.param, **VARIANTS[request.param])
    return hf_model(folder), load_model(folder), request.param


@pytest.mark.parametrize("n", [5, 8, 37])  # shorter than, equal to and longer than the window of 8
def test_full_forward_matches_transformers(pair, n):
    ref, ours, _ = pair
    ids = _ids(n)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids, torch.arange(n)[None]).logits
    assert (want - got).abs().max().item() <= TOL


def test_batched_forward_matches_transformers(pair):
    ref, ours, _ = pair
    ids = torch.cat([_ids(20, seed=1), _ids(20, seed=2)])
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids, torch.arange(20).expand(2, 20)).logits
    assert (want - got).abs().max().item() <= TOL


def test_cached_decoding_across_the_window_matches_transformers(pair):
    ref, ours, _ = pair
    n = 150  # several windows, and enough for sliding layers to drop old positions
    ids = _ids(n, seed=3)
    with torch.no_grad():
        want = ref(ids).logits
        cache = ours.new_cache(margin=4)
        got = [ours(ids[:, :10], torch.arange(10)[None], cache).logits]
        for t in range(10, n):
            got.append(ours(ids[:, t : t + 1], torch.tensor([[t]]), cache).logits)
    assert (want - torch.cat(got, dim=1)).abs().max().item() <= TOL
    assert cache.length == n
    sliding = [layer for layer in cache.layers if layer.window is not None]
    if sliding:  # windowed: they hold at most window - 1 + margin + slack positions
        assert all(layer.start > 0 for layer in sliding)
        assert all(layer.end - layer.start <= 8 - 1 + 4 + 64 for layer in sliding)


def test_truncate_inside_margin_then_continue_equals_fresh_run(pair):
    _, ours, _ = pair
    ids = _ids(120, seed=4)
    other = _ids(30, seed=5)
    with torch.no_grad():
        cache = ours.new_cache(margin=16)
        for t in range(100):
            ours(ids[:, t : t + 1], torch.tensor([[t]]), cache)
        cache.truncate(90)  # backspace 10 tokens
        cont = torch.cat([ids[:, :90], other], dim=1)
        got = ours(other, torch.arange(90, 120)[None], cache).logits
        want = ours(cont, torch.arange(120)[None]).logits[:, 90:]
    assert (want - got).abs().max().item() <= TOL


def test_truncate_beyond_margin_is_refused_and_changes_nothing(checkpoints):
    ours = load_model(checkpoints("default"))
    ids = _ids(200, seed=6)
    with torch.no_grad():
        cache = ours.new_cache(margin=4)
        ours(ids, torch.arange(200)[None], cache)
    before = [(layer.start, layer.end) for layer in cache.layers]
    with pytest.raises(CacheError, match="cannot roll back"):
        cache.truncate(100)
    assert [(layer.start, layer.end) for layer in cache.layers] == before


def test_mtp_logits_match_transformers_mtp_model(pair):
    ref, ours, _ = pair
    mtp = hf_mtp(ref)
    n = 30
    ids = _ids(n, seed=7)
    pos = torch.arange(n)[None]
    with torch.no_grad():
        hidden = ref(ids, output_hidden_states=True).hidden_states[-1]
        want = mtp._project_to_logits(
            mtp.forward_layer(0, hidden[:, :-1], pos[:, 1:], None, input_ids=ids[:, 1:])
        )
        got, _, _ = ours.mtp(ours, ids[:, 1:], ours(ids, pos).hidden[:, :-1], pos[:, 1:])
    assert (want - got).abs().max().item() <= TOL


def test_mtp_draft_matches_transformers_candidate(pair):
    """The drafting call transformers' MTPCandidateGenerator makes after a prefill, with its cache."""
    from transformers.cache_utils import MtpCache

    ref, ours, _ = pair
    mtp = hf_mtp(ref)
    n = 25
    ids = _ids(n, seed=8)
    with torch.no_grad():
        out = ref(ids, output_hidden_states=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([ids, nxt], dim=1)
        cache = MtpCache(config=ref.config.get_mtp_config())
        cand, _, _ = mtp(full[:, 1:], out.hidden_states[-1], None, torch.arange(1, n + 1)[None], cache)
        from engine.backends.torch_backend import TorchBackend

        backend = TorchBackend(ours)
        seq = backend.new_sequence()
        logits = backend.forward(seq, ids[0].tolist())
        assert int(logits[-1].argmax()) == int(nxt)
        drafts = backend.draft(seq, int(nxt), 1)
    assert drafts == cand[0].tolist()


def test_checkpoint_without_mtp_loads_with_mtp_disabled(checkpoints, caplog):
    folder = checkpoints("no_mtp", with_mtp=False)
    with caplog.at_level("WARNING"):
        model = load_model(folder)
    assert model.mtp is None
    assert any("no mtp.* tensors" in r.message for r in caplog.records)
    ref = hf_model(folder)
    ids = _ids(12)
    with torch.no_grad():
        assert (ref(ids).logits - model(ids, torch.arange(12)[None]).logits).abs().max() <= TOL


def test_bf16_and_fp16_loads_run_close_to_fp32(checkpoints):
    folder = checkpoints("default")
    ids = _ids(16)
    pos = torch.arange(16)[None]
    with torch.no_grad():
        want = load_model(folder)(ids, pos).logits
        for dtype in ("bf16", "fp16"):
            m = load_model(folder, dtype=dtype)
            assert next(m.parameters()).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            got = m(ids, pos).logits.float()
            assert (want - got).abs().max() < 0.1
