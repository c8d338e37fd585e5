"""Constrained decoding with llguidance: a token mask per step from a JSON Schema or a Lark grammar.

Offers ``Constraint`` (``json_schema``, ``json_object``, ``lark``, ``tool_call``; per step
``mask``, ``allow``, ``advance``, ``accepting``, ``done``; for speculative drafts ``check_draft``
and ``draft_masks``; ``rollback``, ``copy``), ``ResponseFormat`` / ``validate_response_format``,
``constraint_for`` (the constraint a chat request asks for, or ``None``), ``tool_call_grammar``,
``grammar_tokenizer`` (llguidance's view of an engine tokenizer, built once per tokenizer) and
``JSON_OPTIONS``. The last ``GRAMMAR_CACHE`` compiled grammars of each tokenizer are kept, so a
schema that comes back (a tool's, a response format's) costs a copy instead of a compile.

The model's end tokens (``Tokenizer.eos_ids``) are allowed exactly when the grammar accepts; once
it can take nothing else they are the only tokens allowed (``done``). JSON is written on one line
with ``", "`` and ``": "`` separators (``JSON_OPTIONS``; a schema's own ``x-guidance`` wins), so a
sampled answer cannot wander off into whitespace. A bad schema or grammar raises ``FieldError``
when the constraint is built; llguidance bounds the work of every step (``LLParserLimits``).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import llguidance
import numpy as np

from .tools import FieldError, ToolCallFormat, ToolChoice, validate_tool_choice

TOKENIZER_FILE = "tokenizer.json"
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
GRAMMAR_CACHE = 64  # compiled grammars kept per tokenizer


class TokenizerLike(Protocol):
    """What constraints need of ``engine.tokenizer.Tokenizer``."""

    source: str  # the folder holding tokenizer.json
    vocab_size: int
    eos_ids: tuple[int, ...]
    special_ids: frozenset[int]

    def token_to_id(self, token: str) -> int | None: ...


# -- llguidance's tokenizer -----------------------------------------------------------------------


def _tokenizer_json(tokenizer: TokenizerLike) -> str:
    """The ``tokenizer.json`` the engine tokenizer was loaded from (its folder is ``source``)."""
    path = Path(tokenizer.source) / TOKENIZER_FILE
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"constrained decoding needs the tokenizer's {path}: {exc}") from None


class _Compiled:
    """llguidance's tokenizer for one engine tokenizer, and its last compiled grammars as pristine
    matchers: a copy takes microseconds, compiling a schema about half a millisecond."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        # from the HF tokenizers JSON, so llguidance tokenizes forced text natively (a Python
        # tokenizer callback made the mask twice as slow)
        self.tokenizer = llguidance.LLTokenizer(
            _tokenizer_json(tokenizer), n_vocab=tokenizer.vocab_size, eos_token=list(tokenizer.eos_ids)
        )
        self._matchers: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher of ``grammar`` (in an error state if the grammar is bad; never cached)."""
        with self._lock:
            found = self._matchers.get(grammar)
            if found is not None:
                self._matchers.move_to_end(grammar)
                return found.deep_copy()
        limits = llguidance.LLParserLimits(verbose_errors=False)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=limits)
        if not matcher.is_error():
            with self._lock:
                self._matchers[grammar] = matcher.deep_copy()
                while len(self._matchers) > GRAMMAR_CACHE:
                    self._matchers.popitem(last=False)
        return matcher


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine tokenizer -> _Compiled
_COMPILED_LOCK = threading.Lock()


def _compiled(tokenizer: TokenizerLike) -> _Compiled:
    with _COMPILED_LOCK:
        found = _COMPILED.get(tokenizer)
        if found is None:
            found = _COMPILED[tokenizer] = _Compiled(tokenizer)
        return found


def grammar_tokenizer(tokenizer: TokenizerLike) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for ``tokenizer`` (built once per tokenizer object, ~20 ms for 8K ids).

    Built from the folder's ``tokenizer.json`` (what the engine tokenizer wraps); the end tokens
    are ``tokenizer.eos_ids``.
    """
    return _compiled(tokenizer).tokenizer


# -- the constraint -------------------------------------------------------------------------------


class Constraint:
    """One generation's grammar state. Per step: ``allow(logits)`` (or ``mask()``), sample,
    ``advance(token)``; stop when ``done`` or when an end token was sampled (then ``accepting``).

    ``vocab_size`` is the model's logits width; ids the tokenizer lacks are never allowed.
    """

    def __init__(
        self, tokenizer: TokenizerLike, grammar: str, *, vocab_size: int | None = None, field: str = "grammar"
    ) -> None:
        self.vocab_size = vocab_size or tokenizer.vocab_size
        if self.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"vocab_size {self.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} ids"
            )
        self._n = tokenizer.vocab_size
        self.eos_ids = tuple(tokenizer.eos_ids)
        self._matcher = _compiled(tokenizer).matcher(grammar)
        if self._matcher.is_error():
            raise FieldError(field, self._matcher.get_error().strip())
        self._bits = np.zeros((1, (self._n + 31) // 32), dtype=np.int32)
        # differs from llguidance's own use: end tokens never reach the matcher (rolling one back
        # out of it leaves a state that no longer accepts, llguidance 1.9.1); we track the end here
        self._ended = False

    # -- builders

    @classmethod
    def json_schema(
        cls,
        tokenizer: TokenizerLike,
        schema: Mapping | bool,
        *,
        vocab_size: int | None = None,
        field: str = "response_format.json_schema.schema",
    ) -> Constraint:
        """Output is one JSON value valid under ``schema``."""
        if not isinstance(schema, (Mapping, bool)):
            raise FieldError(field, f"must be a JSON Schema object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                _json_text(schema, field), defaults=JSON_OPTIONS
            )
        except ValueError as exc:
            raise FieldError(field, f"invalid schema: {exc}") from None
        return cls(tokenizer, grammar, vocab_size=vocab_size, field=field)

    @classmethod
    def json_object(cls, tokenizer: TokenizerLike, *, vocab_size: int | None = None) -> Constraint:
        """Output is one JSON object (``response_format: {"type": "json_object"}``)."""
        return cls.json_schema(tokenizer, {"type": "object"}, vocab_size=vocab_size, field="response_format")

    @classmethod
    def lark(
        cls, tokenizer: TokenizerLike, grammar: str, *, vocab_size: int | None = None, field: str = "grammar"
    ) -> Constraint:
        """Output matches a Lark grammar (llguidance's dialect: ``start`` rule, ``%json {...}``, ``<|tok|>``)."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise FieldError(field, "must be a non-empty Lark grammar string")
        return cls(
            tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), vocab_size=vocab_size, field=field
        )

    @classmethod
    def tool_call(
        cls,
        tokenizer: TokenizerLike,
        tools: Sequence[Mapping],
        tool_choice: ToolChoice | str | Mapping,
        fmt: ToolCallFormat = ToolCallFormat(),
        *,
        parallel: bool = False,
        vocab_size: int | None = None,
    ) -> Constraint:
        """Output is a call (or with ``parallel`` several, one per line) in ``fmt`` of the chosen tool
        (``tool_choice`` ``function``) or of any tool (``required``), arguments under its schema."""
        grammar = tool_call_grammar(tokenizer, tools, tool_choice, fmt, parallel=parallel)
        return cls.lark(tokenizer, grammar, vocab_size=vocab_size, field="tools")

    # -- per step

    def mask(self) -> np.ndarray:
        """Bool array (vocab_size,): the tokens allowed next."""
        if self._ended:
            out = np.zeros(self.vocab_size, dtype=bool)
            out[list(self.eos_ids)] = True
            return out
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error():
            raise ValueError(f"the grammar failed: {self._matcher.get_error()}")
        out = np.zeros(self.vocab_size, dtype=bool)
        out[: self._n] = np.unpackbits(self._bits.view(np.uint8), count=self._n, bitorder="little").view(bool)
        return out

    def allow(self, logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``logits`` (vocab_size,) with every token the grammar refuses set to -inf. ``mask`` is
        this step's ``mask()`` if the caller has it already (computed in a thread during the
        forward pass, say: llguidance and ONNX Runtime both release the GIL)."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"logits have {logits.shape[-1]} entries; the constraint expects {self.vocab_size}"
            )
        allowed = self.mask() if mask is None else mask
        return np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)

    def advance(self, token: int) -> None:
        """Take ``token``; raises ValueError (state unchanged) if the grammar refuses it."""
        if self.check_draft([token]) != 1:
            raise ValueError(f"token {token} is not allowed by the grammar at this point")
        if token in self.eos_ids:
            self._ended = True
        elif not self._matcher.consume_token(int(token)):
            raise ValueError(f"the grammar failed on token {token}: {self._matcher.get_error()}")

    @property
    def accepting(self) -> bool:
        """The output so far is complete (an end token may follow)."""
        return self._matcher.is_accepting()

    @property
    def done(self) -> bool:
        """Nothing but an end token can follow (or one was taken)."""
        return self._ended or self._matcher.is_stopped()

    # -- speculative drafts

    def check_draft(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the grammar accepts from here (state unchanged). An end
        token counts when the output before it is complete; nothing after it counts."""
        if self._ended:
            return 0
        tokens = [int(t) for t in tokens]
        end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
        n = self._matcher.validate_tokens(tokens[:end]) if end else 0
        if n < end or end == len(tokens):
            return n
        # the end token is ours to judge (llguidance's validate_tokens refuses a lone end token
        # once the grammar is stopped, yet counts one that follows other tokens)
        if end and not self._matcher.consume_tokens(tokens[:end]):
            raise ValueError(f"the grammar failed on a draft it had accepted: {self._matcher.get_error()}")
        complete = self._matcher.is_accepting()
        if end:
            self._rollback(end)
        return end + complete

    def draft_masks(self, tokens: Sequence[int]) -> tuple[int, np.ndarray]:
        """``(n, masks)``: ``n = check_draft(tokens)`` and the masks (n + 1, vocab_size) before each
        of the n accepted tokens and after the last, for verifying a draft with masked logits."""
        n = self.check_draft(tokens)
        masks = np.zeros((n + 1, self.vocab_size), dtype=bool)
        for i in range(n + 1):
            masks[i] = self.mask()
            if i < n:
                self.advance(tokens[i])
        self.rollback(n)
        return n, masks

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens taken."""
        if n and self._ended:
            self._ended, n = False, n - 1
        self._rollback(n)

    def _rollback(self, n: int) -> None:
        if n and not self._matcher.rollback(n):
            raise ValueError(f"cannot roll the grammar back by {n} tokens: {self._matcher.get_error()}")

    def copy(self) -> Constraint:
        """An independent copy of this state."""
        other = object.__new__(Constraint)
        other.__dict__.update(self.__dict__)
        other._matcher = self._matcher.deep_copy()
        other._bits = self._bits.copy()
        return other


def _json_text(value: object, field: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise FieldError(field, f"is not JSON data: {exc}") from None


# -- tool calls -----------------------------------------------------------------------------------


def _lark_literal(tokenizer: TokenizerLike, text: str) -> str:
    """``text`` in a Lark rule: the special token itself when ``text`` is one, else the string."""
    token_id = tokenizer.token_to_id(text)
    if token_id is not None and token_id in tokenizer.special_ids:
        return f"<[{token_id}]>"
    return json.dumps(text, ensure_ascii=False)


def _call_schema(tool: Mapping, fmt: ToolCallFormat) -> dict:
    """JSON Schema of one call object: the tool's name as a constant and its parameters."""
    fn = tool["function"]
    params = dict(fn.get("parameters") or {"type": "object"})
    defs = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}  # refs resolve from the root
    return {
        "type": "object",
        "properties": {fmt.name_key: {"const": fn["name"]}, fmt.arguments_key: params},
        "required": [fmt.name_key, fmt.arguments_key],
        "additionalProperties": False,
        "x-guidance": JSON_OPTIONS,
        **defs,
    }


def tool_call_grammar(
    tokenizer: TokenizerLike,
    tools: Sequence[Mapping],
    tool_choice: ToolChoice | str | Mapping,
    fmt: ToolCallFormat = ToolCallFormat(),
    *,
    parallel: bool = False,
) -> str:
    """The Lark grammar of a forced call (see ``Constraint.tool_call``); ``tools`` as ``validate_tools``
    gives them, ``tool_choice`` a ``ToolChoice`` or the request's raw value."""
    if not isinstance(tool_choice, ToolChoice):
        tool_choice = validate_tool_choice(tool_choice, tools)
    if not tool_choice.forces_call:
        raise FieldError("tool_choice", f"{tool_choice.mode!r} does not force a call; nothing to constrain")
    chosen = [t for t in tools if tool_choice.mode == "required" or t["function"]["name"] == tool_choice.name]
    if not chosen:
        raise FieldError("tool_choice", f"names {tool_choice.name!r}, which is not among the tools")
    start, end = _lark_literal(tokenizer, fmt.start), _lark_literal(tokenizer, fmt.end)
    lines = [
        'start: call ("\\n" call)*' if parallel else "start: call",
        f"call: {start} body {end}",
        "body: " + " | ".join(f"fn{i}" for i in range(len(chosen))),
    ]
    lines += [f"fn{i}: %json {_json_text(_call_schema(t, fmt), 'tools')}" for i, t in enumerate(chosen)]
    return "\n".join(lines) + "\n"


# -- what a request asks for ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseFormat:
    """``type``: ``text``, ``json_object`` or ``json_schema`` (then ``schema`` and ``name``)."""

    type: str = "text"
    schema: Mapping | bool | None = None
    name: str | None = None


def validate_response_format(value: object) -> ResponseFormat:
    """Check an OpenAI ``response_format``; ``None`` means text."""
    if value is None:
        return ResponseFormat()
    if not isinstance(value, Mapping):
        raise FieldError("response_format", f"must be an object, got {type(value).__name__}")
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise FieldError(
            "response_format.type", f"is {kind!r}; expected 'text', 'json_object' or 'json_schema'"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise FieldError("response_format.json_schema", "must be an object with 'name' and 'schema'")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise FieldError("response_format.json_schema.name", "must be a string")
    schema = spec.get("schema", {})
    if not isinstance(schema, (Mapping, bool)):
        raise FieldError(
            "response_format.json_schema.schema", f"must be a JSON Schema object, got {schema!r:.80}"
        )
    return ResponseFormat("json_schema", schema, name)


def constraint_for(
    tokenizer: TokenizerLike,
    *,
    tools: Sequence[Mapping] = (),
    tool_choice: ToolChoice = ToolChoice("none"),
    response_format: ResponseFormat = ResponseFormat(),
    fmt: ToolCallFormat = ToolCallFormat(),
    vocab_size: int | None = None,
) -> Constraint | None:
    """The constraint of a chat request: a forced tool call wins over ``response_format``; ``None``
    when decoding is free (``tool_choice`` auto/none and a text response)."""
    if tool_choice.forces_call:
        return Constraint.tool_call(tokenizer, tools, tool_choice, fmt, vocab_size=vocab_size)
    if response_format.type == "json_object":
        return Constraint.json_object(tokenizer, vocab_size=vocab_size)
    if response_format.type == "json_schema":
        return Constraint.json_schema(tokenizer, response_format.schema, vocab_size=vocab_size)
    return None
