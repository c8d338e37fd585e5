"""Train the embedded tiny Mellum model on the CPython standard library (CPU, deterministic).

    python tools/train_tiny.py --corpus runs/corpus/manifest.json --tokenizer runs/tokenizer \
        --out runs/train --steps 1500

The model has the Mellum 2 shape at small scale (config in ``tiny_config``): layers in the
sliding, sliding, sliding, full pattern, GQA, 8 experts top-2 with the first layer dense, one MTP
layer, YaRN on the full-attention layers. Samples are half plain next-token prediction over
``<filename>path\\ncontent<|endoftext|>`` documents and half fill-in-the-middle in the engine's own
suffix-prefix-middle layout (``engine.prompt``): the rest of a line, a few lines, or a random span,
some with other files of the same package prepended as ``<filename>`` context. The loss is the
next-token loss + 0.3 x the MTP loss (on a quarter of the positions) + 0.01 x the router
load-balancing loss. Training resumes from ``OUT/state.pt`` and writes an HF folder ``OUT/model``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checkpoint import save_model  # noqa: E402
from engine.model.config import from_hf  # noqa: E402
from engine.model.mellum import Mellum  # noqa: E402
from engine.prompt import FimPieces, assemble, context_block  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

IGNORE = -100


def tiny_config(vocab_size: int) -> dict:
    """The embedded model's config.json (HF layout)."""
    layers = 8
    return {
        "architectures": ["MellumForCausalLM"],
        "model_type": "mellum",
        "vocab_size": vocab_size,
        "hidden_size": 192,
        "intermediate_size": 512,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 48,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "sliding_window": 256,
        "tie_word_embeddings": True,
        "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * (layers // 4),
        "mlp_layer_types": ["dense"] + ["sparse"] * (layers - 1),
        "rope_parameters": {
            "full_attention": {
                "rope_type": "yarn",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "original_max_position_embeddings": 4096,
            },
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "norm_topk_prob": True,
        "router_aux_loss_coef": 0.01,
        "num_nextn_predict_layers": 1,
        "mtp_layer_types": ["sliding_attention"],
        "mtp_mlp_layer_types": ["sparse"],
        "attention_bias": False,
    }


@dataclass
class Doc:
    path: str
    text: str
    package: str


def load_docs(manifest: Path, split: str) -> list[Doc]:
    m = json.loads(manifest.read_text())
    root = Path(m["stdlib_root"])
    docs = []
    for rel in m[split]:
        text = (root / rel).read_text(encoding="utf-8")
        docs.append(Doc(rel, text, rel.split("/")[0] if "/" in rel else ""))
    return docs


class Sampler:
    """Deterministic training samples: sample ``i`` of step ``s`` depends only on (seed, s, i)."""

    def __init__(self, tok: Tokenizer, docs: list[Doc], seed: int) -> None:
        self.tok, self.docs, self.seed = tok, docs, seed
        self.weights = np.array([len(d.text) for d in docs], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.by_package: dict[str, list[int]] = {}
        for i, d in enumerate(docs):
            self.by_package.setdefault(d.package, []).append(i)
        self._doc_ids: dict[int, list[int]] = {}

    def doc_ids(self, i: int) -> list[int]:
        if i not in self._doc_ids:
            d = self.docs[i]
            self._doc_ids[i] = [self.tok.fim.file, *self.tok.encode(f"{d.path}\n{d.text}"), self.tok.fim.eot]
        return self._doc_ids[i]

    def lm(self, rng: np.random.Generator, n: int) -> tuple[list[int], list[int]]:
        """n+1 tokens from a random offset of a length-weighted document, continued by others."""
        out: list[int] = []
        first = True
        while len(out) < n + 1:
            ids = self.doc_ids(int(rng.choice(len(self.docs), p=self.weights)))
            start = int(rng.integers(0, max(1, len(ids) - n // 2))) if first else 0
            out += ids[start:]
            first = False
        out = out[: n + 1]
        return out, out

    def fim(self, rng: np.random.Generator, n: int) -> tuple[list[int], list[int]]:
        tok = self.tok
        di = int(rng.choice(len(self.docs), p=self.weights))
        d = self.docs[di]
        prefix, middle, suffix = split_for_fim(rng, d.text)
        mid = tok.encode(middle)[: n // 3]
        header = (tok.fim.file, *tok.encode(f"{d.path}\n"))
        room = n + 1 - len(header) - 4 - len(mid)
        pre, suf = tok.encode(prefix), tok.encode(suffix)
        context: list[tuple[int, ...]] = []
        if rng.random() < 0.3:
            mates = [j for j in self.by_package.get(d.package, []) if j != di]
            for j in rng.permutation(mates)[:3] if mates else []:
                other = self.docs[int(j)]
                text = other.text[: int(rng.integers(500, 4000))]
                context.append(context_block(tok, other.path, text))
            # keep half the room for the file itself
            budget = room // 2
            kept = []
            for block in context:
                if len(block) <= budget:
                    kept.append(block)
                    budget -= len(block)
            context = kept
        pieces = FimPieces(tuple(context), header, tuple(suf), tuple(pre))
        prompt = assemble(tok, pieces, max_tokens=n + 1 - len(mid) - 1)
        ids = prompt + mid + [tok.fim.eot]
        labels = list(ids)
        pad = n + 1 - len(ids)
        ids += [tok.fim.pad] * pad
        labels += [IGNORE] * pad
        return ids, labels

    def batch(self, step: int, batch_size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in range(batch_size):
            rng = np.random.default_rng([self.seed, step, i])
            ids, labels = self.fim(rng, n) if rng.random() < 0.5 else self.lm(rng, n)
            xs.append(ids)
            ys.append(labels)
        return torch.tensor(xs), torch.tensor(ys)


def split_for_fim(rng: np.random.Generator, text: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix): the rest of a line (40 %), 1-8 lines (30 %) or a random span (30 %)."""
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(x) for x in lines])
    mode = rng.random()
    if mode < 0.4 and lines:
        candidates = [i for i, x in enumerate(lines) if len(x.strip()) >= 2]
        if candidates:
            i = candidates[int(rng.integers(len(candidates)))]
            line = lines[i].rstrip("\r\n")
            indent = len(line) - len(line.lstrip())
            col = int(rng.integers(indent, len(line)))
            a, b = int(starts[i]) + col, int(starts[i]) + len(line)
            return text[:a], text[a:b], text[b:]
    if mode < 0.7 and lines:
        i = int(rng.integers(len(lines)))
        k = int(rng.integers(1, 9))
        a = int(starts[i])
        if rng.random() < 0.5:  # cursor after the indentation
            a += len(lines[i]) - len(lines[i].lstrip(" \t"))
        b = int(starts[min(i + k, len(lines))])
        return text[:a], text[a:b], text[b:]
    a = int(rng.integers(0, len(text) + 1))
    length = 0 if rng.random() < 0.05 else int(min(rng.exponential(120), 600))
    b = min(len(text), a + length)
    return text[:a], text[a:b], text[b:]


def init_weights(model: Mellum, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")):
                p.copy_(torch.randn(p.shape, generator=g) * residual_std)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def load_balance(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch-style balance: E * sum_i(fraction routed to i * mean prob of i), averaged over layers (1 = even)."""
    total = 0.0
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        e = probs.shape[-1]
        chosen = probs.topk(top_k, dim=-1).indices
        frac = torch.bincount(chosen.reshape(-1), minlength=e).float() / chosen.numel()
        total = total + e * (frac * probs.mean(0)).sum()
    return total / len(router_logits)


def losses(model: Mellum, x: torch.Tensor, y: torch.Tensor, mtp_fraction: float, gen: torch.Generator):
    """(main CE, MTP CE, balance) for inputs x[:, :-1] predicting y[:, 1:]."""
    inp, tgt = x[:, :-1], y[:, 1:]
    b, t = inp.shape
    pos = torch.arange(t).expand(b, t)
    out = model(inp, pos)
    main = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE)
    routers = list(out.router_logits)
    # MTP at position p+1 reads token p+1 and hidden p and predicts token p+2.
    z, r = model.mtp.hidden_states(model, inp[:, 1:], out.hidden[:, :-1], pos[:, 1:])
    if r is not None:
        routers.append(r)
    keep = torch.rand(b, t - 1, generator=gen) < mtp_fraction
    mtp_logits = model.lm_head(z[keep])
    mtp = F.cross_entropy(mtp_logits, tgt[:, 1:][keep], ignore_index=IGNORE)
    return main, mtp, load_balance(routers, model.config.moe.top_k)


@torch.no_grad()
def heldout_loss(model: Mellum, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        t = x.shape[1] - 1
        out = model(x[:, :-1], torch.arange(t).expand(x.shape[0], t))
        tgt = y[:, 1:]
        loss = F.cross_entropy(
            out.logits.reshape(-1, out.logits.shape[-1]),
            tgt.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total += float(loss)
        count += int((tgt != IGNORE).sum())
    model.train()
    return total / count


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--tokens-per-step", type=int, default=8192)
    p.add_argument("--short-len", type=int, default=512, help="sequence length of the first phase")
    p.add_argument("--long-len", type=int, default=1024, help="sequence length of the last quarter")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=100)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_folder(a.tokenizer)
    hf = tiny_config(tok.vocab_size)
    hf.update(eos_token_id=list(tok.eos_ids), pad_token_id=tok.fim.pad, bos_token_id=None)
    config = from_hf(hf)
    model = Mellum(config)
    init_weights(model, a.seed)
    decay = [p_ for n, p_ in model.named_parameters() if p_.ndim >= 2 and "norm" not in n]
    no_decay = [p_ for n, p_ in model.named_parameters() if not (p_.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.95),
        fused=True,
    )
    start = 0
    state_path = a.out / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    train = Sampler(tok, load_docs(a.corpus, "train"), a.seed)
    held = Sampler(tok, load_docs(a.corpus, "heldout"), a.seed + 1)
    held_batches = [held.batch(10_000 + i, 4, a.long_len) for i in range(4)]
    log = (a.out / "log.jsonl").open("a")
    gen = torch.Generator().manual_seed(a.seed)
    model.train()
    t_last, tokens_since = time.perf_counter(), 0
    for step in range(start, a.steps):
        n = a.short_len if step < 0.75 * a.steps else a.long_len
        x, y = train.batch(step, a.tokens_per_step // n, n)
        gen.manual_seed(a.seed * 1_000_003 + step)
        lr = lr_at(step, a.steps, a.lr, a.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        main_loss, mtp_loss, bal = losses(model, x, y, 0.25, gen)
        loss = main_loss + 0.3 * mtp_loss + config.moe.router_aux_loss_coef * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        tokens_since += x.numel()
        if step % 10 == 0 or step == a.steps - 1:
            now = time.perf_counter()
            rec = {
                "step": step,
                "loss": round(float(main_loss), 4),
                "mtp": round(float(mtp_loss), 4),
                "balance": round(float(bal), 4),
                "lr": lr,
                "grad_norm": round(gnorm, 3),
                "seq": n,
                "tok_s": round(tokens_since / (now - t_last)),
            }
            if step % a.eval_every == 0 or step == a.steps - 1:
                rec["heldout"] = round(heldout_loss(model, held_batches), 4)
            t_last, tokens_since = now, 0
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if (step + 1) % a.save_every == 0 and step + 1 < a.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, state_path)
    model.eval()
    final = a.out / "model"
    save_model(model, final, dtype="fp16")
    cfg = json.loads((final / "config.json").read_text())
    cfg.update(hf | {"dtype": "float16"})
    (final / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a.tokenizer / name, final / name)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": a.steps}, state_path)
    print(f"wrote {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
