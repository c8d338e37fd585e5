"""Fill-in-the-middle prompt layout, shared by training, evaluation and the engine.

The layout comes from the model folder's ``tokenizer_config.json`` (``mellum_fim``); the default
is suffix-prefix-middle (spm), most stable part first so that typing only appends tokens:

    <filename>{ctx path}\\n{ctx text} ...  <filename>{path}\\n  <fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>

The model writes the middle and then ``<|endoftext|>``. This module is the one owner of that
layout: as token ids for a local model (``FimPieces`` — each part as ids, so callers can cache
them separately —, ``fim_pieces``, ``assemble``, ``layout``: the ids and the length of their stable
part) and as text for a remote server (``render_text``; ``split_text`` reads it back).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .protocol import ErrorCode, ProtocolError
from .tokenizer import Tokenizer

FILE_TOKEN = "<filename>"  # the file-block token as text (remote servers tokenise it themselves)


def block_text(path: str, text: str = "") -> str:
    """A file block after its ``<filename>`` token: the path, a newline, the content."""
    return f"{path}\n{text}"


@dataclass(frozen=True)
class FimPieces:
    context: tuple[tuple[int, ...], ...]  # one block per context file: <filename>path\ntext
    header: tuple[int, ...]  # <filename>path\n of the current file (may be empty)
    suffix: tuple[int, ...]  # text after the cursor, without the FIM token
    prefix: tuple[int, ...]  # text before the cursor, without the FIM token


def context_block(tok: Tokenizer, path: str, text: str) -> tuple[int, ...]:
    return (tok.fim.file, *tok.encode(block_text(path, text)))


def header_block(tok: Tokenizer, path: str | None) -> tuple[int, ...]:
    return (tok.fim.file, *tok.encode(block_text(path))) if path else ()


def fim_pieces(
    tok: Tokenizer, prefix: str, suffix: str, context: Sequence[tuple[str, str]] = (), path: str | None = None
) -> FimPieces:
    header = header_block(tok, path)
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


def render_text(p: Any, fim_template: str | None = None, repo_context: bool = True) -> str:
    """The prompt text of a FIM request ``p`` (prefix, suffix, context, path) for a server that
    builds the FIM prompt itself: ``<filename>{path}\\n{text}`` per context chunk and a
    ``<filename>{path}\\n`` header for the current file (both only with ``repo_context`` and when
    there is context or a path), then the prefix — or ``fim_template`` with its ``{prefix}`` and
    ``{suffix}`` filled in, for servers that take no ``suffix``."""
    head = ""
    if repo_context and (p.context or p.path):
        for c in p.context:
            if c.text is None:
                raise ProtocolError(ErrorCode.UNKNOWN_CONTEXT_KEY, f"context chunk {c.path!r} has no text")
            head += FILE_TOKEN + block_text(c.path, c.text)
        head += FILE_TOKEN + block_text(p.path or "")
    if fim_template is None:
        return head + p.prefix
    values = {"prefix": p.prefix, "suffix": p.suffix}
    return head + re.sub(r"\{(prefix|suffix)\}", lambda m: values[m[1]], fim_template)


def split_text(prompt: str) -> tuple[list[dict[str, str]], str | None, str]:
    """(context chunks, current path, prefix) of a prompt in ``render_text``'s layout.

    A prompt that opens with ``<filename>{path}\\n{text}`` blocks gives every block but the last as
    a context chunk; the last names the current file and holds the prefix. Any other prompt is all
    prefix.
    """
    if not prompt.startswith(FILE_TOKEN):
        return [], None, prompt
    blocks = []
    for block in prompt.split(FILE_TOKEN)[1:]:
        path, newline, text = block.partition("\n")
        if not newline:
            return [], None, prompt
        blocks.append((path, text))
    *context, (path, prefix) = blocks
    return [{"path": p, "text": t} for p, t in context], path or None, prefix
