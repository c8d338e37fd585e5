"""Train the embedded tiny Mellum model (CPU, deterministic): from scratch, or continued from a model.

    python tools/train_tiny.py --corpus runs/corpus/manifest.json --tokenizer runs/tokenizer \
        --out runs/train --steps 1500
    python tools/train_tiny.py --init engine/embedded/mellum-tiny-py \
        --corpus /work/data/corpus-stdlib/manifest.json /work/data/pypi/manifest.json \
        --tasks /work/data/tasks --task-share 0.4 --out /work/data/train2 --steps 3000 --max-minutes 300

The model has the Mellum 2 shape at small scale (config in ``tiny_config``): layers in the
sliding, sliding, sliding, full pattern, GQA, 8 experts top-2 with the first layer dense, one MTP
layer, YaRN on the full-attention layers. ``--init DIR`` continues from a model folder instead (its
config, weights, tokenizer and chat template; the learning rate then warms up again to ``--lr``).

Samples: corpus documents (``--corpus``: stdlib and PyPI manifests, read by
``corpus.load_documents``) give half plain next-token prediction over
``<filename>path\ncontent<|endoftext|>`` documents and half fill-in-the-middle in the engine's own
suffix-prefix-middle layout (``engine.prompt``): the rest of a line, a few lines, or a random span,
some with other files of the same package prepended as ``<filename>`` context. With ``--tasks``
(``tools/tasks.py``'s ``train.jsonl`` / ``heldout.jsonl``), a ``--task-share`` of the sequences
are task samples instead, packed several to a sequence: FIM tasks in the engine's layout with
their context chunks, chat tasks in the model folder's chat template with the loss on the
assistant turns only. The loss is the next-token loss + 0.3 x the MTP loss (on a quarter of the
positions) + 0.01 x the router load-balancing loss.

Resumable: ``OUT/state.pt`` (model, optimizer, step, tokens seen) is written every
``--save-every`` steps and when the run stops (``--steps`` reached or ``--max-minutes`` spent);
a run started again continues from it. Every stop writes the HF folder ``OUT/model`` with
``mellum_train_context`` (the longest sequence trained on) in its config.json. ``OUT/log.jsonl``
has the loss, tokens seen, and every ``--eval-every`` steps the held-out loss (corpus and tasks).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import Document, load_documents  # noqa: E402

from engine.chat.template import ChatTemplate  # noqa: E402
from engine.checkpoint import load_model, save_model  # noqa: E402
from engine.model.config import from_hf  # noqa: E402
from engine.model.mellum import Mellum  # noqa: E402
from engine.prompt import FimPieces, assemble, context_block, fim_pieces  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

IGNORE = -100
TRAIN_CONTEXT_FIELD = "mellum_train_context"  # read by mellum_lsp.context.budget
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


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


def read_jsonl(path: Path) -> list[dict]:
    """Samples written by tools/tasks.py, one JSON object per line."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_docs(manifests: list[Path], split: str) -> list[Document]:
    """The documents of ``split`` of every manifest (stdlib and PyPI)."""
    return [d for m in manifests for d in load_documents(m, split)]


class Sampler:
    """Deterministic training samples: sample ``i`` of step ``s`` depends only on (seed, s, i)."""

    def __init__(self, tok: Tokenizer, docs: list[Document], seed: int) -> None:
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


class TaskSampler:
    """Task samples (``tools/tasks.py``) as token ids with labels, packed into sequences.

    A FIM task is laid out as the engine lays out a completion (context chunks, file header,
    suffix, prefix) and its middle + end of text is the target. A chat task is rendered turn by
    turn with the model folder's chat template: each assistant turn is tokenized on its own after
    the prompt before it (as the engine tokenizes a prompt and the model then writes), and only the
    assistant turns are targets. Samples longer than the sequence are left out.
    """

    def __init__(
        self, tok: Tokenizer, template: ChatTemplate, samples: list[dict], n: int, seed: int
    ) -> None:
        self.tok, self.template, self.n, self.seed = tok, template, n, seed
        self.items: list[tuple[list[int], list[int]]] = []
        self.kinds: list[str] = []
        self.dropped = 0
        for sample in samples:
            ids, labels = self.encode(sample)
            if len(ids) > n + 1:
                self.dropped += 1
                continue
            self.items.append((ids, labels))
            self.kinds.append(sample["kind"])
        if not self.items:
            raise ValueError(f"no task sample fits a sequence of {n + 1} tokens ({self.dropped} too long)")
        by_kind: dict[str, list[int]] = {}
        for i, k in enumerate(self.kinds):
            by_kind.setdefault(k, []).append(i)
        self.by_kind = [by_kind[k] for k in sorted(by_kind)]  # kinds drawn evenly, then a sample

    def encode(self, sample: dict) -> tuple[list[int], list[int]]:
        tok = self.tok
        if "messages" not in sample:
            pieces = fim_pieces(
                tok, sample["prefix"], sample["suffix"], sample.get("context", ()), sample.get("path")
            )
            prompt = assemble(tok, pieces)
            target = [*tok.encode(sample["middle"]), tok.fim.eot]
            return prompt + target, [IGNORE] * len(prompt) + target
        messages, tools = sample["messages"], sample.get("tools") or None
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.template.render(messages[:k], tools=tools, add_generation_prompt=True)
            upto = self.template.render(messages[: k + 1], tools=tools, add_generation_prompt=False)
            if not before.startswith(done) or not upto.startswith(before):
                raise ValueError(f"the chat template does not render {sample['kind']} turn by turn")
            context = tok.encode(before[len(done) :], allow_special=True)
            answer = tok.encode(upto[len(before) :], allow_special=True)
            ids += context + answer
            labels += [IGNORE] * len(context) + answer
            done = upto
        return ids, labels

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """``n + 1`` tokens: samples drawn (kind, then sample) until the next does not fit, then padding."""
        ids: list[int] = []
        labels: list[int] = []
        while True:
            group = self.by_kind[int(rng.integers(len(self.by_kind)))]
            x, y = self.items[group[int(rng.integers(len(group)))]]
            if ids and len(ids) + len(x) > self.n + 1:
                break
            ids, labels = ids + x, labels + y
            if len(ids) >= self.n + 1:
                break
        pad = self.n + 1 - len(ids)
        return ids[: self.n + 1] + [self.tok.fim.pad] * pad, labels[: self.n + 1] + [IGNORE] * pad

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in range(batch_size):
            ids, labels = self.sequence(np.random.default_rng([self.seed, step, i, 7]))
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


def build_model(a: argparse.Namespace, tok: Tokenizer) -> tuple[Mellum, dict]:
    """The model to train and its HF config: from ``--init`` (continued) or ``tiny_config`` (new)."""
    if a.init is not None:
        hf = json.loads((a.init / "config.json").read_text())
        model = load_model(a.init, dtype="fp32")
        if model.config.vocab_size != tok.vocab_size:
            raise ValueError(
                f"--init {a.init} has {model.config.vocab_size} tokens, the tokenizer {tok.vocab_size}"
            )
        return model, hf
    hf = tiny_config(tok.vocab_size)
    hf.update(eos_token_id=list(tok.eos_ids), pad_token_id=tok.fim.pad, bos_token_id=None)
    model = Mellum(from_hf(hf))
    init_weights(model, a.seed)
    return model, hf


def export(model: Mellum, hf: dict, folder: Path, tokenizer: Path, train_context: int) -> None:
    """The HF folder of the model: fp16 weights, config.json (with the trained length), tokenizer
    files and chat template."""
    model.eval()
    save_model(model, folder, dtype="fp16")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hf | {"dtype": "float16", TRAIN_CONTEXT_FIELD: train_context})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    model.train()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, nargs="+", required=True, help="corpus manifests (stdlib, PyPI)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: --init's)")
    p.add_argument("--init", type=Path, default=None, help="continue from this model folder")
    p.add_argument(
        "--tasks", type=Path, default=None, help="folder with tools/tasks.py's train/heldout.jsonl"
    )
    p.add_argument(
        "--task-share", type=float, default=0.4, help="share of the sequences that are task samples"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument(
        "--max-minutes", type=float, default=0.0, help="stop (and save) after this long; 0: no limit"
    )
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
    if a.tokenizer is None and a.init is None:
        p.error("give --tokenizer (a new model) or --init (continue from a model folder)")
    if not 0.0 <= a.task_share < 1.0:
        p.error(f"--task-share must be in [0, 1), got {a.task_share}")
    tokenizer_dir = a.tokenizer or a.init

    t_start = time.monotonic()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_folder(tokenizer_dir)
    model, hf = build_model(a, tok)
    config = model.config
    model.train()
    decay = [p_ for n, p_ in model.named_parameters() if p_.ndim >= 2 and "norm" not in n]
    no_decay = [p_ for n, p_ in model.named_parameters() if not (p_.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.95),
        fused=True,
    )
    start, tokens_seen = 0, 0
    state_path = a.out / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, tokens_seen = state["step"], state.get("tokens", 0)
        print(f"resumed at step {start} ({tokens_seen} tokens seen)", flush=True)
    train = Sampler(tok, load_docs(a.corpus, "train"), a.seed)
    held = Sampler(tok, load_docs(a.corpus, "heldout"), a.seed + 1)
    held_batches = [held.batch(10_000 + i, 4, a.long_len) for i in range(4)]
    tasks = held_tasks = None
    if a.tasks is not None and a.task_share > 0:
        template = ChatTemplate.from_folder(tokenizer_dir)
        tasks = TaskSampler(tok, template, read_jsonl(a.tasks / "train.jsonl"), a.long_len, a.seed)
        held_tasks = TaskSampler(tok, template, read_jsonl(a.tasks / "heldout.jsonl"), a.long_len, a.seed + 1)
        print(f"tasks: {len(tasks.items)} train samples ({tasks.dropped} too long), "
              f"{len(held_tasks.items)} held out", flush=True)  # fmt: skip
    held_task_batches = [held_tasks.batch(10_000 + i, 4) for i in range(4)] if held_tasks else []

    def save(step: int) -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": tokens_seen},
                   state_path)  # fmt: skip

    log = (a.out / "log.jsonl").open("a")
    gen = torch.Generator().manual_seed(a.seed)
    t_last, tokens_since = time.perf_counter(), 0
    step = start
    for step in range(start, a.steps):
        n = a.short_len if step < 0.75 * a.steps else a.long_len
        batch_size = max(1, a.tokens_per_step // n)
        n_tasks = round(a.task_share * batch_size) if tasks is not None and n == a.long_len else 0
        x, y = train.batch(step, batch_size - n_tasks, n) if n_tasks < batch_size else (None, None)
        if n_tasks:
            tx, ty = tasks.batch(step, n_tasks)
            x, y = (tx, ty) if x is None else (torch.cat([x, tx]), torch.cat([y, ty]))
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
        tokens_seen += x.numel()
        out_of_time = a.max_minutes > 0 and time.monotonic() - t_start > 60 * a.max_minutes
        if step % 10 == 0 or step == a.steps - 1 or out_of_time:
            now = time.perf_counter()
            rec = {
                "step": step,
                "tokens": tokens_seen,
                "loss": round(float(main_loss.detach()), 4),
                "mtp": round(float(mtp_loss.detach()), 4),
                "balance": round(float(bal.detach()), 4),
                "lr": lr,
                "grad_norm": round(gnorm, 3),
                "seq": n,
                "task_seqs": n_tasks,
                "tok_s": round(tokens_since / (now - t_last)),
            }
            if step % a.eval_every == 0 or step == a.steps - 1 or out_of_time:
                rec["heldout"] = round(heldout_loss(model, held_batches), 4)
                if held_task_batches:
                    rec["heldout_tasks"] = round(heldout_loss(model, held_task_batches), 4)
            t_last, tokens_since = now, 0
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if out_of_time:
            print(f"stopping after {a.max_minutes:g} minutes at step {step + 1}", flush=True)
            break
        if (step + 1) % a.save_every == 0 and step + 1 < a.steps:
            save(step + 1)
    done = min(step + 1, a.steps) if a.steps > start else start
    save(done)
    trained_len = max(
        a.long_len if done > 0.75 * a.steps else a.short_len, int(hf.get(TRAIN_CONTEXT_FIELD) or 0)
    )
    export(model, hf, a.out / "model", tokenizer_dir, trained_len)
    print(f"wrote {a.out / 'model'} at step {done} ({tokens_seen} tokens seen)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
