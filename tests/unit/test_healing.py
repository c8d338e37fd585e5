"""Token healing: the prefix's last token is re-chosen under a constraint that keeps the text."""

import numpy as np
import pytest

from engine.backends.torch_backend import TorchBackend
from engine.healing import TokenHealer
from engine.jobs import Job
from engine.protocol import CompleteParams, Sampling
from engine.service import Engine, EngineConfig
from engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return Tokenizer.from_folder(tiny_model_dir)


def test_allowed_tokens_are_exactly_those_starting_with_the_dropped_bytes(tok):
    healer = TokenHealer(tok)
    for dropped in (b" ", b"re", b"def", b"\n", b"    ", b"\xff", b"zzzzzz"):
        want = sorted(i for i in range(tok.vocab_size)
                      if i not in tok.special_ids and tok.decode_bytes([i]).startswith(dropped))  # fmt: skip
        assert sorted(healer.allowed(dropped).tolist()) == want, dropped


def test_heal_drops_the_last_prefix_token_and_mask_keeps_it_possible(tok):
    healer = TokenHealer(tok)
    ids = tok.encode("    def __iter__(self):\n        ret")
    kept, dropped = healer.heal(ids)
    assert kept == ids[:-1] and dropped == tok.decode_bytes(ids[-1:])
    logits = np.random.default_rng(0).standard_normal(tok.vocab_size).astype(np.float32)
    masked = healer.mask(logits, dropped)
    assert np.isfinite(masked[ids[-1]])  # the original token is always allowed
    assert all(tok.decode_bytes([int(i)]).startswith(dropped) for i in np.flatnonzero(np.isfinite(masked)))
    assert healer.heal([]) == ([], b"") and healer.heal([tok.fim.eot]) == ([tok.fim.eot], b"")


def test_engine_output_continues_after_the_cursor_without_repeating_the_healed_bytes(tiny_model_dir, tok):
    backend = TorchBackend.load(str(tiny_model_dir))
    prefix = "import textwrap\n\n\ndef wrap(text):\n    ret"
    healed = Engine(backend, tok, EngineConfig(token_healing=True))
    plain = Engine(backend, tok, EngineConfig(token_healing=False))
    params = CompleteParams(prefix, "\n", (), "a.py", "d", Sampling(max_tokens=8))
    ids_h, _, dropped, arr_h, _ = healed.fim_ids(params, reserve=8, heal=True)
    ids_p, _, none, _, _ = plain.fim_ids(params, reserve=8)
    assert arr_h.tolist() == ids_h
    assert none == b"" and dropped == tok.decode_bytes(tok.encode(prefix)[-1:])
    assert len(ids_h) == len(ids_p) - 1  # the prompt lost exactly the cut token
    job = Job(1, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document="d")
    out = healed.execute(job)
    # the first token is the best one that starts with the dropped bytes; the text is what follows them
    seq = backend.new_sequence()
    first = int(np.argmax(healed.healer.mask(backend.forward(seq, ids_h)[-1], dropped)))
    assert tok.decode_bytes([first]).startswith(dropped)
    rest = tok.decode_bytes([first])[len(dropped) :].decode("utf-8", errors="ignore")
    assert out["text"].startswith(rest)
