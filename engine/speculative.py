"""Greedy decoding with speculation: drafts from prompt lookup or the MTP layer, verified in one pass.

Rule: the main model's argmax decides every token. A draft d_1..d_k after the pending token t is
checked by one forward over [t, d_1..d_k]; d_i is accepted while it equals the argmax after
t, d_1..d_{i-1}; the first mismatch (or the step after the last draft) yields the model's own
token, so every step emits at least one token and the output equals plain greedy decoding.

Drafts come from prompt lookup first (the longest recent n-gram of the sequence found earlier in
it proposes what followed it, which pays off when an edit copies nearby code), else from the MTP
layer chained on itself. Offers ``SpecConfig``, ``prompt_lookup``, ``SpecStats`` and
``greedy_decode``.

Under a grammar (``constraint``: llguidance through ``engine.chat.constrain``) every token is the
argmax of the *masked* logits at its own grammar state: a draft is first cut to what the grammar
accepts (``check_draft``), then verified position by position, each position's mask computed only
once the tokens before it are accepted — so constrained output equals constrained plain greedy,
and the mask is computed once per emitted token, as without speculation.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .backends.base import Backend, Sequence


@dataclass(frozen=True)
class SpecConfig:
    mtp_drafts: int = 2  # MTP tokens per step (the layer chained on its own hidden state)
    lookup: bool = True
    lookup_ngram: int = 3  # longest n-gram to match
    lookup_min_ngram: int = 2
    lookup_drafts: int = 8
    lookup_window: int = 4096  # how far back to search (keeps the cost per token bounded)

    @property
    def enabled(self) -> bool:
        return self.mtp_drafts > 0 or self.lookup


NO_SPECULATION = SpecConfig(mtp_drafts=0, lookup=False)


def prompt_lookup(ids: np.ndarray, n_max: int, n_min: int, k: int, window: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the sequence's last n-gram."""
    total = len(ids)
    lo = max(0, total - window)
    for n in range(n_max, n_min - 1, -1):
        if total - lo <= n:
            continue
        tail = ids[total - n :]
        hay = ids[lo : total - 1]  # occurrences must end before the last token
        if len(hay) < n:
            continue
        match = np.ones(len(hay) - n + 1, dtype=bool)
        for j in range(n):
            match &= hay[j : len(hay) - n + 1 + j] == tail[j]
        hits = np.flatnonzero(match)
        if len(hits):
            start = lo + int(hits[-1]) + n
            draft = ids[start : min(start + k, total)]
            if len(draft):
                return [int(x) for x in draft]
    return []


class Grammar(Protocol):
    """What decoding needs of a constraint (``engine.chat.constrain.Constraint``)."""

    def mask(self) -> np.ndarray: ...

    def allow(self, logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray: ...

    def advance(self, token: int) -> None: ...

    def check_draft(self, tokens: Seq[int]) -> int: ...


MASK_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mellum-grammar")


def pick(
    logits: np.ndarray, grammar: Grammar | None = None, end_ids: Seq[int] = (), mask: Future | None = None
) -> int:
    """The greedy token: the argmax of ``logits``, under ``grammar`` when there is one (which then
    takes the token, unless it is an end token). ``mask``: this step's mask, being computed in a
    thread while the model ran (llguidance and ONNX Runtime both release the GIL)."""
    if grammar is None:
        return int(np.argmax(logits))
    token = int(np.argmax(grammar.allow(logits, None if mask is None else mask.result())))
    if token not in end_ids:
        grammar.advance(token)
    return token


@dataclass
class SpecStats:
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    mtp_drafted: int = 0
    mtp_accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def add(self, other: SpecStats) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def greedy_decode(
    backend: Backend,
    seq: Sequence,
    logits: np.ndarray,
    max_new: int,
    spec: SpecConfig,
    on_tokens: Callable[[list[int]], bool],
    should_stop: Callable[[], str | None] = lambda: None,
    grammar: Grammar | None = None,
    end_ids: Seq[int] = (),
) -> tuple[list[int], str, SpecStats]:
    """Greedy tokens after ``seq`` whose next-token logits are ``logits``.

    ``on_tokens(new)`` is called after every step with the tokens it produced; it returns True
    to stop (a stop token or string). ``should_stop()`` returns a reason ("cancelled",
    "deadline") to end early. Returns (tokens, reason, stats); the sequence holds all tokens but
    the last (whose KV is computed only when decoding continues).
    """
    stats = SpecStats()
    out: list[int] = []
    token = pick(logits, grammar, end_ids)
    out.append(token)
    if on_tokens([token]) or max_new <= 1:
        return out, "stop" if len(out) < max_new else "length", stats
    while len(out) < max_new:
        reason = should_stop()
        if reason:
            return out, reason, stats
        room = max_new - len(out)
        draft, source = [], ""
        if spec.lookup and room > 1:
            history = np.asarray(seq.ids[-spec.lookup_window :] + [token], dtype=np.int64)
            draft = prompt_lookup(
                history, spec.lookup_ngram, spec.lookup_min_ngram, spec.lookup_drafts, spec.lookup_window
            )
            source = "lookup"
        if not draft and spec.mtp_drafts and backend.has_mtp and room > 1:
            draft, source = backend.draft(seq, token, spec.mtp_drafts), "mtp"
        draft = draft[: room - 1]
        if grammar is not None and draft:
            ends = [i for i, t in enumerate(draft) if t in end_ids]
            draft = draft[: ends[0] if ends else len(draft)]  # an end token is never verified past
            draft = draft[: grammar.check_draft(draft)]  # nor what the grammar refuses
        n0 = len(seq.ids)
        # the first position's mask depends only on tokens already taken: compute it meanwhile
        first_mask = MASK_THREAD.submit(grammar.mask) if grammar is not None else None
        step_logits = backend.forward(seq, [token, *draft], logits_to_keep=len(draft) + 1)
        accepted = 0
        if grammar is None:
            predicted = np.argmax(step_logits, axis=-1)
            while accepted < len(draft) and int(predicted[accepted]) == draft[accepted]:
                accepted += 1
            final = int(predicted[accepted])
        else:  # each position's mask at its own grammar state, once the tokens before it are accepted
            while True:
                final = pick(step_logits[accepted], grammar, end_ids, first_mask if accepted == 0 else None)
                if accepted == len(draft) or final != draft[accepted]:
                    break
                accepted += 1
        new = [*draft[:accepted], final]
        if accepted < len(draft):
            backend.truncate(seq, n0 + 1 + accepted)  # drop the rejected drafts' KV
        stats.steps += 1
        stats.drafted += len(draft)
        stats.accepted += accepted
        if source == "lookup":
            stats.lookup_drafted += len(draft)
            stats.lookup_accepted += accepted
        elif source == "mtp":
            stats.mtp_drafted += len(draft)
            stats.mtp_accepted += accepted
        new = new[:room]
        out.extend(new)
        token = new[-1]
        if on_tokens(new):
            return out, "stop", stats
    return out, "length", stats
