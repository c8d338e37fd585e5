"""Fill-in-the-middle prompt layout, shared by training, evaluation and the engine.

The layout comes from the model folder's ``tokenizer_config.json`` (``mellum_fim``); the default
is suffix-prefix-middle (spm), most stable part first so that typing only appends tokens:

    <filename>{ctx path}\\n{ctx text} ...  <filename>{path}\\n  <fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>

The model writes the middle and then ``<|endoftext|>``. Offers ``FimPieces`` (each part as token
ids, so callers can cache them separately), ``fim_pieces``, ``assemble`` and ``layout`` (the ids
and the length of their stable part).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .tokenizer import Tokenizer


@dataclass(frozen=True)
class FimPieces:
    context: tuple[tuple[int, ...], ...]  # one block per context file: <filename>path\ntext
    header: tuple[int, ...]  # <filename>path\n of the current file (may be empty)
    suffix: tuple[int, ...]  # text after the cursor, without the FIM token
    prefix: tuple[int, ...]  # text before the cursor, without the FIM token


def context_block(tok: Tokenizer, path: str, text: str) -> tuple[int, ...]:
    return (tok.fim.file, *tok.encode(f"{path}\n{text}"))


def fim_pieces(
    tok: Tokenizer, prefix: str, suffix: str, context: Sequence[tuple[str, str]] = (), path: str | None = None
) -> FimPieces:
    header = (tok.fim.file, *tok.encode(f"{path}\n")) if path else ()
    return FimPieces(
        tuple(context_block(tok, p, t) for p, t in context),
        header,
        tuple(tok.encode(suffix)),
        tuple(tok.encode(prefix)),
    )


def assemble(tok: Tokenizer, pieces: FimPieces, max_tokens: int | None = None) -> list[int]:
    """The prompt ids; over ``max_tokens`` it drops context blocks (last first), then trims the
    suffix's tail and the prefix's head, keeping what is nearest the cursor."""
    return layout(tok, pieces, max_tokens)[0]


def layout(tok: Tokenizer, pieces: FimPieces, max_tokens: int | None = None) -> tuple[list[int], int]:
    """``assemble``'s ids and the length of their stable part (the kept context blocks and the
    file header), which the engine snapshots for reuse across documents."""
    f = tok.fim
    context = list(pieces.context)
    prefix, suffix = list(pieces.prefix), list(pieces.suffix)
    fixed = len(pieces.header) + 3
    if max_tokens is not None:
        while context and fixed + sum(map(len, context)) + len(prefix) + len(suffix) > max_tokens:
            context.pop()
        room = max_tokens - fixed - sum(map(len, context))
        if len(prefix) + len(suffix) > room:
            keep_suffix = min(len(suffix), max(room // 4, room - len(prefix)))
            suffix = suffix[:keep_suffix]
            prefix = prefix[len(prefix) - (room - keep_suffix) :] if room - keep_suffix > 0 else []
    ids = list(itertools.chain.from_iterable(context))  # C-level: this is O(context) per keystroke
    ids += pieces.header
    stable = len(ids)
    if tok.template.order == "spm":
        ids += [f.suffix, *suffix, f.prefix, *prefix, f.middle]
    else:
        ids += [f.prefix, *prefix, f.suffix, *suffix, f.middle]
    return ids, stable
