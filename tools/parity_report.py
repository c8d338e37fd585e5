"""Print the max |logit difference| between our Mellum and transformers' on tiny random checkpoints.

    python tools/parity_report.py [--model DIR]

The same scenarios as tests/unit/test_model_parity.py (which asserts <= 1e-4), printed as
numbers: full forward, cached token-by-token decoding across the window, truncate-and-continue
against a fresh run, and the MTP layer against transformers' MtpModel. ``--model`` adds a row for
an existing folder (e.g. the embedded model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from engine.checkpoint import load_model  # noqa: E402


def deltas(folder: Path, n: int = 150) -> dict[str, float]:
    from hf_reference import hf_model, hf_mtp

    ref, ours = hf_model(folder), load_model(folder)
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(n)[None]
    out = {}
    with torch.no_grad():
        want = ref(ids).logits
        out["full forward"] = float((want - ours(ids, pos).logits).abs().max())
        cache = ours.new_cache(margin=4)
        got = [ours(ids[:, t : t + 1], pos[:, t : t + 1], cache).logits for t in range(n)]
        out["cached decode"] = float((want - torch.cat(got, 1)).abs().max())
        cache = ours.new_cache(margin=16)
        ours(ids[:, :100], pos[:, :100], cache)
        cache.truncate(90)
        cont = ours(ids[:, 100:], torch.arange(90, 90 + n - 100)[None], cache).logits
        fresh = ours(torch.cat([ids[:, :90], ids[:, 100:]], 1), torch.arange(90 + n - 100)[None]).logits[
            :, 90:
        ]
        out["truncate+continue"] = float((cont - fresh).abs().max())
        if ours.mtp is not None:
            mtp = hf_mtp(ref)
            hidden = ref(ids, output_hidden_states=True).hidden_states[-1]
            w = mtp._project_to_logits(
                mtp.forward_layer(0, hidden[:, :-1], pos[:, 1:], None, input_ids=ids[:, 1:])
            )
            g, _, _ = ours.mtp(ours, ids[:, 1:], ours(ids, pos).hidden[:, :-1], pos[:, 1:])
            out["mtp"] = float((w - g).abs().max())
    return out


def main(argv: list[str] | None = None) -> int:
    from hf_reference import VARIANTS, make_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", default=[])
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(VARIANTS.items()):
            rows.append((name, deltas(make_checkpoint(Path(tmp) / str(i), **kw))))
    for folder in a.model:
        rows.append((str(folder), deltas(folder, n=600)))
    keys = ["full forward", "cached decode", "truncate+continue", "mtp"]
    print(f"{'checkpoint':<52} " + " ".join(f"{k:>18}" for k in keys))
    for name, d in rows:
        print(f"{name:<52} " + " ".join(f"{d.get(k, float('nan')):>18.2e}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
