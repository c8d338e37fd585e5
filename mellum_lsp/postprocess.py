"""Clean-up of a raw FIM completion before it is shown as an inline suggestion (pure functions).

Offers `multiline_allowed(prefix, suffix, language)`, `missing_indent(prefix, suffix, language)` and
`postprocess(completion, prefix, suffix, language, *, multiline_allowed)`.

`missing_indent`: the indentation an editor would have put on the empty line at the cursor after a
line that opens a block (Enter after `def f(n):`), or "" — for callers that are not editors.

`multiline_allowed` (tree-sitter decides what opens a block; brackets in strings/comments don't count):
- true when the code before the cursor opens a block: a Python block header's `:` or a C-like `{`;
- true in an empty block (`{|}`) and on an empty line (a block body, or top level);
- false with code after the cursor on its line, or at the end of a line that opens no block.

`postprocess` rules, applied in order:
0. runaway repetition: a unit of 1-16 characters repeated 4 or more times in a row, or of 17-160
   characters 3 or more times (the last may be cut short by the end of the generation) (a model stuck in a loop, `str(str(str(str(`, the same line again and
   again) is cut after its first occurrence; a loop inside one word (`apply_co_co_co…`) is cut back
   to the longest name of the file that word starts with, or dropped. Indentation, rulers (`-----`)
   and ordinary words (`10000`, `0xFFFF`, `xxxx`) are left alone.
1. single line: without multi-line, cut at the first newline.
2. block end: multi-line stops at a dedent below the block, or after the `}` that closes the block.
3. brackets: drop a closer the suffix already supplies, or one with nothing to close, and the rest.
4. suffix repeat: drop trailing lines equal to the lines after the cursor, and a repeat of the line's rest.
5. trailing whitespace: strip it (but end `{|}` with a newline so the `}` gets its own line).
6. empty: a whitespace-only suggestion becomes "".
"""

from __future__ import annotations

import re
from functools import cache

from mellum_lsp.context.languages import LanguageRegistry, normalize_language

_OPEN_OF = {")": "(", "]": "[", "}": "{"}
_OPENERS = frozenset("([{")
_CHAR_LITERAL_LANGS = frozenset({"c", "cpp", "java", "go", "rust"})
_MULTILINE_QUOTES = {
    "python": ('"""', "'''"),
    "javascript": ("`",),
    "typescript": ("`",),
    "tsx": ("`",),
    "go": ("`",),
}
_PY_TOKENS = re.compile(r"#|\"\"\"|'''|\"|'|[()\[\]{}]")
_C_TOKENS = re.compile(r"//|/\*|\"|'|`|[()\[\]{}]")
_GENERIC_TOKENS = re.compile(r"\"|'|[()\[\]{}]")
_CHAR_LITERAL = re.compile(r"'(?:\\.[^'\n]{0,8}|[^'\\\n])'")
_PY_BLOCK_HEADERS = frozenset(
    {"function_definition", "class_definition", "if_statement", "elif_clause", "else_clause", "for_statement",
     "while_statement", "with_statement", "try_statement", "except_clause", "except_group_clause",
     "finally_clause", "match_statement", "case_clause"}
)  # fmt: skip
_PY_HEADER_LINE = re.compile(
    r"^\s*(?:async\s+)?(?:def|class|if|elif|else|for|while|with|try|except|finally|match|case)\b.*:\s*(?:#.*)?$"
)
_PUNCTUATION = re.compile(r"[^\w\s()\[\]{}]+")
_SCAN_LIMIT = 50_000  # characters of prefix / suffix scanned for brackets
_PARSE_LINES = 400  # lines of prefix parsed with tree-sitter to decide whether the cursor opens a block


@cache
def _registry() -> LanguageRegistry:
    """Grammars for `multiline_allowed`, loaded on first use (immutable once loaded)."""
    return LanguageRegistry()


# --- lexing: brackets outside strings and comments ----------------------------------------------


def _family(language: str | None) -> str:
    return language if language is not None else "generic"


def _find_quote_end(text: str, start: int, quote: str, multiline: bool) -> int:
    """Index after the closing `quote` from `start`; -1 if the text ends first, -2 if a newline does."""
    k = start
    while True:
        idx = text.find(quote, k)
        if not multiline:
            nl = text.find("\n", start, idx if idx >= 0 else len(text))
            if nl >= 0:
                return -2
        if idx < 0:
            return -1
        b, slashes = idx - 1, 0
        while b >= start and text[b] == "\\":
            slashes, b = slashes + 1, b - 1
        if slashes % 2 == 0:
            return idx + len(quote)
        k = idx + 1


def _scan(
    text: str, language: str | None, state: str | None = None, comments: list[int] | None = None
) -> tuple[list[tuple[int, str]], str | None]:
    """Brackets of `text` outside strings and comments as (index, char), and the string or block
    comment still open at its end (its closing delimiter), starting inside `state` if given.
    Start indices of line comments are appended to `comments` when given."""
    family = _family(language)
    multi = _MULTILINE_QUOTES.get(family, ())
    events: list[tuple[int, str]] = []
    n, i = len(text), 0
    if state == "*/":
        end = text.find("*/")
        if end < 0:
            return events, state
        i = end + 2
    elif state is not None:
        end = _find_quote_end(text, 0, state, state in multi)
        if end == -1:
            return events, state
        i = text.find("\n") if end == -2 else end
    pattern = _PY_TOKENS if family == "python" else _GENERIC_TOKENS if family == "generic" else _C_TOKENS
    while i < n:
        m = pattern.search(text, i)
        if m is None:
            break
        tok, j = m.group(), m.end()
        if tok in _OPENERS or tok in _OPEN_OF:
            events.append((m.start(), tok))
            i = j
        elif tok in ("#", "//"):
            if comments is not None:
                comments.append(m.start())
            nl = text.find("\n", j)
            i = n if nl < 0 else nl
        elif tok == "/*":
            end = text.find("*/", j)
            if end < 0:
                return events, "*/"
            i = end + 2
        elif tok == "'" and family in _CHAR_LITERAL_LANGS:
            lit = _CHAR_LITERAL.match(text, m.start())
            i = lit.end() if lit else j  # not a char literal: a Rust lifetime or a stray quote
        elif tok == "`" and tok not in multi:
            i = j  # backticks mean nothing in this language
        else:
            end = _find_quote_end(text, j, tok, tok in multi)
            if end == -1:
                return events, tok
            i = text.find("\n", j) if end == -2 else end
    return events, None


def _prefix_state(prefix: str, language: str | None) -> tuple[list[str], str | None]:
    """Openers before the cursor that are still open (outermost first), and the open string/comment."""
    start = max(0, len(prefix) - _SCAN_LIMIT)
    if start:
        start = prefix.find("\n", start) + 1 or len(prefix)
    events, state = _scan(prefix[start:], language)
    stack: list[str] = []
    for _, ch in events:
        if ch in _OPENERS:
            stack.append(ch)
        elif _OPEN_OF[ch] in stack:
            while stack.pop() != _OPEN_OF[ch]:
                pass
    return stack, state


def _closed_by_suffix(outer: list[str], suffix: str, language: str | None, state: str | None) -> set[int]:
    """Indices of `outer` that the suffix closes: its unmatched closers, matched innermost first."""
    if not outer:
        return set()
    events, _ = _scan(suffix[:_SCAN_LIMIT], language, state)
    depth: list[str] = []
    closers: list[str] = []
    for _, ch in events:
        if ch in _OPENERS:
            depth.append(ch)
        elif depth and depth[-1] == _OPEN_OF[ch]:
            depth.pop()
        elif not depth:
            closers.append(ch)
            if len(closers) >= len(outer):
                break
    closed, i = set(), len(outer) - 1
    for ch in closers:
        while i >= 0 and outer[i] != _OPEN_OF[ch]:
            i -= 1  # an opener the suffix skips stays open: the completion may close it
        if i < 0:
            break
        closed.add(i)
        i -= 1
    return closed


# --- multi-line decision -----------------------------------------------------------------------


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip())


def _code_of_line(line: str, language: str | None) -> str:
    """The line without its trailing line comment."""
    comments: list[int] = []
    _scan(line, language, None, comments)
    return line[: comments[0]] if comments else line


def _parse_tail(prefix: str) -> str:
    """The end of `prefix` from the last line that starts at column 0 within `_PARSE_LINES` lines."""
    lines = prefix.split("\n")[-_PARSE_LINES:]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i][:1] not in ("", " ", "\t"):
            return "\n".join(lines[i:])
    body = lines[-50:]
    common = min((_indent(x) for x in body if x.strip()), default=0)
    return "\n".join(x.expandtabs(4)[common:] for x in body)


def _last_leaf(node):
    """The last non-comment leaf of a tree, or None."""
    while node.child_count:
        children = [c for c in node.children if c.type != "comment" and c.end_byte > c.start_byte]
        if not children:
            return None
        node = children[-1]
    return node


def _opens_block(prefix: str, language: str | None) -> bool:
    """Whether the code before the cursor ends with a block opener (tree-sitter where possible)."""
    line = prefix.rsplit("\n", 1)[-1]
    code = _code_of_line(line, language).rstrip()
    if not code.endswith(":" if language == "python" else "{"):
        return False
    tail = _parse_tail(prefix)
    if _scan(tail, language)[1] is not None:
        return False  # inside a string or block comment
    if language is None:
        return True
    leaf = _last_leaf(_registry().parse(language, tail.encode("utf-8", errors="replace")).root_node)
    if language == "python":
        if leaf is not None and leaf.type == ":" and leaf.parent is not None:
            if leaf.parent.type in _PY_BLOCK_HEADERS:
                return True
            if leaf.parent.type != "ERROR":
                return False
        return bool(_PY_HEADER_LINE.match(line))  # code around is broken: fall back to the line's shape
    return leaf is None or leaf.type == "{"


def multiline_allowed(prefix: str, suffix: str, language: str | None) -> bool:
    """Whether a multi-line suggestion fits at the cursor (see the module docstring)."""
    language = normalize_language(language)
    rest = suffix.split("\n", 1)[0].strip()
    before = prefix.rsplit("\n", 1)[-1]
    if rest:
        return rest[0] == "}" and language != "python" and _opens_block(prefix, language)
    if not before.strip():
        return True
    return _opens_block(prefix, language)


def _indent_unit(text: str) -> str:
    """The file's indentation step: the most common increase from one line to the next (4 spaces
    when there is none)."""
    steps: dict[str, int] = {}
    previous = ""
    for line in text.split("\n")[:2000]:
        if not line.strip():
            continue
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if len(indent) > len(previous) and indent.startswith(previous):
            step = indent[len(previous) :]
            steps[step] = steps.get(step, 0) + 1
        previous = indent
    return max(steps, key=lambda k: (steps[k], -len(k))) if steps else "    "


def missing_indent(prefix: str, suffix: str, language: str | None) -> str:
    """What an editor's Enter would have indented the cursor's empty line by, beyond what is there:
    the block body's indentation when the last non-blank line before it opens a block."""
    language = normalize_language(language)
    before, _, current = prefix.rpartition("\n")
    if current.strip() or suffix.split("\n", 1)[0].strip() or not before.strip():
        return ""
    header_text = before.rstrip()
    if not _opens_block(header_text, language):
        return ""
    header = header_text.rsplit("\n", 1)[-1]
    body = header[: len(header) - len(header.lstrip(" \t"))] + _indent_unit(prefix + suffix)
    return body[len(current) :] if body.startswith(current) and len(body) > len(current) else ""


# --- the rules ---------------------------------------------------------------------------------


def _block_and_brackets(
    completion: str, prefix: str, suffix: str, language: str | None, multiline: bool
) -> str:
    """Rules 1-3: one line or up to the block's end, and brackets balanced against the suffix."""
    outer, state = _prefix_state(prefix, language)
    closed = _closed_by_suffix(outer, suffix, language, state)
    lines = completion.split("\n")
    if not multiline:
        lines = lines[:1]
    cursor_line = prefix.rsplit("\n", 1)[-1]
    first = cursor_line + lines[0]
    header = _code_of_line(first, language).rstrip()
    opens = header.endswith(":") if language == "python" else header.endswith("{")
    base = _indent(first) if first.strip() and not opens else None
    stack: list[str] = []
    p = len(outer) - 1
    stop_after_line = False
    out: list[str] = []
    for i, line in enumerate(lines):
        if i > 0:
            if stop_after_line and not stack:
                break
            stripped = line.strip()
            if stripped and state is None:
                if base is None:
                    base = _indent(line)
                elif _indent(line) < base and stripped[0] not in _OPEN_OF:
                    break
        events, state = _scan(line, language, state)
        cut = None
        for idx, ch in events:
            if ch in _OPENERS:
                stack.append(ch)
            elif stack:
                if stack[-1] != _OPEN_OF[ch]:
                    cut = idx  # mismatched closer
                    break
                stack.pop()
            elif p >= 0 and outer[p] == _OPEN_OF[ch] and p not in closed:
                p -= 1  # closes an opener before the cursor that the suffix leaves open
                if ch == "}" and multiline and language != "python":
                    stop_after_line = True
            else:
                cut = idx  # the suffix already closes it, or nothing to close
                break
        if cut is not None:
            out.append(line[:cut])
            break
        out.append(line)
        if state not in (None, "*/") and state not in _MULTILINE_QUOTES.get(_family(language), ()):
            state = None  # a one-line string ends with its line
    return "\n".join(out)


def _balanced(text: str) -> bool:
    depth: list[str] = []
    for ch in text:
        if ch in _OPENERS:
            depth.append(ch)
        elif ch in _OPEN_OF and (not depth or depth.pop() != _OPEN_OF[ch]):
            return False
    return not depth


def _drop_suffix_repeat(completion: str, suffix: str) -> str:
    """Rule 4: trailing lines equal to the next lines of the suffix, then a repeat of the rest of line."""
    suffix_lines = suffix.split("\n")
    following = [x.strip() for x in suffix_lines[1:40] if x.strip()][:8]
    lines = completion.split("\n")
    body = [(i, x.strip()) for i, x in enumerate(lines) if i > 0 and x.strip()]
    for m in range(min(len(body), len(following)), 0, -1):
        if [x for _, x in body[-m:]] == following[:m]:
            completion = "\n".join(lines[: body[-m][0]])
            break
    rest = suffix_lines[0].strip()
    tail = completion.rstrip()
    if not rest or rest[0] in _OPEN_OF:
        return completion  # closers are rule 3's business
    if tail.endswith(rest) and _balanced(rest):
        return tail[: len(tail) - len(rest)]
    lead = _PUNCTUATION.match(rest)
    if lead:
        for k in range(len(lead.group()), 0, -1):
            if tail.endswith(rest[:k]):
                return tail[: len(tail) - k]
    return completion


def _strip_trailing(completion: str, prefix: str, suffix: str) -> str:
    """Rule 5, with the `{|}` exception."""
    stripped = completion.rstrip()
    rest = suffix.split("\n", 1)[0].strip()
    if "\n" in stripped and rest[:1] in _OPEN_OF:
        indent = re.match(r"[ \t]*", prefix.rsplit("\n", 1)[-1]).group(0)
        return stripped + "\n" + indent
    return stripped


_RUNAWAY = re.compile(r"(.{1,16}?)\1{3,}", re.DOTALL)  # a short unit, 4+ times in a row
_RUNAWAY_LONG = re.compile(r"(?=((.{17,160}?)\2))", re.DOTALL)  # a line or phrase twice, at each offset
_MIN_PARTIAL = 8  # a third occurrence cut short by the end of the generation still counts from here
_MIN_LONG_CODE = 10  # non-blank characters a long unit needs (`'\\n'` + indentation is a string table)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RULER_CHARS = frozenset("-=#*~^<>/_")  # `-----` under a docstring heading, `#####` banners
_MAX_RULER = 100
_MAX_PUNCTUATION_RUN = 8  # `f(g(h(x))))`, empty docstrings, escaped backslashes
_MAX_NUMBER_CHARS = 24  # 1_000_000, 0xFFFFFFFF, 0b10101010 repeat by nature; longer runs do not
_MAX_LETTER_RUN = 8  # `xxxx` is a placeholder; `uuuuuuuu…` is a loop
_NAME_SCAN = 20_000  # characters of prefix / suffix searched for names the file already has


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _word_start(text: str, i: int) -> int:
    while i > 0 and _is_word(text[i - 1]):
        i -= 1
    return i


def _word_end(text: str, i: int) -> int:
    while i < len(text) and _is_word(text[i]):
        i += 1
    return i


def _ordinary_punctuation(unit: str, run: int) -> bool:
    """Runs of one punctuation character that code has by nature: rulers and short runs."""
    if len(unit) != 1 or _is_word(unit):
        return False
    return run <= (_MAX_RULER if unit in _RULER_CHARS else _MAX_PUNCTUATION_RUN)


def _periodic(unit: str) -> bool:
    """Whether `unit` is itself a shorter unit repeated (a ruler: the short rule's business)."""
    return (unit + unit).find(unit, 1) < len(unit)


def _ordinary_word(word: str, unit: str, run: int) -> bool:
    """Words that repeat a unit by nature: numbers and short runs of one letter."""
    if word[:1].isdigit():
        return len(word) <= _MAX_NUMBER_CHARS
    if set(word) == {"_"}:
        return run <= _MAX_RULER  # `# ______` banners
    return len(unit) == 1 and run < _MAX_LETTER_RUN


def _known_name_end(head: str, word: str, prefix: str, suffix: str) -> int:
    """How much of `word` (continuing `head`, the identifier the prefix ends with) to keep: up to
    the end of the longest name of the file that the looping word starts with, else 0."""
    names = set(_IDENTIFIER.findall(prefix[-_NAME_SCAN:])) | set(_IDENTIFIER.findall(suffix[:_NAME_SCAN]))
    whole = head + word
    best = 0
    for name in names:
        if len(name) > len(head) and whole.startswith(name) and len(name) - len(head) > best:
            best = len(name) - len(head)
    return best


def _cut_runaway_repetition(text: str, prefix: str = "", suffix: str = "") -> str:
    """Rule 0: keep one occurrence of a unit the model repeated 4+ times (a line or phrase of 17+
    characters: 3+ times, the last possibly cut short by the end of the text). Whitespace runs are
    exempt (indentation repeats by nature), and so are rulers (`-----`), short runs of a closer or
    quote (`))))`, an empty docstring) and ordinary words (`10000`, `0xFFFF`, `xxxx`). A loop inside one word
    (`apply_co_co_co…`) has no good place to stop: the word is cut back to the longest name of the
    file it starts with (`apply_discount_discount…` -> `apply_discount`), or dropped."""
    text = _cut_short_units(text, prefix, suffix)
    for m in _RUNAWAY_LONG.finditer(text):
        unit = m.group(2)
        third = text[m.start() + 2 * len(unit) :][: len(unit)]
        cut_short = len(third) >= _MIN_PARTIAL and m.start() + 2 * len(unit) + len(third) == len(text)
        if len("".join(unit.split())) < _MIN_LONG_CODE or _periodic(unit):
            continue
        if third == unit or (cut_short and unit.startswith(third)):
            end = m.start() + len(unit)
            inside = end < len(text) and _is_word(text[end - 1]) and _is_word(text[end])
            return text[: _word_start(text, end) if inside else end]
    return text


def _cut_short_units(text: str, prefix: str, suffix: str) -> str:
    for m in _RUNAWAY.finditer(text):
        unit, run = m.group(1), m.group(0)
        if not unit.strip() or _ordinary_punctuation(unit, len(run)):
            continue
        end = m.start() + len(unit)
        if not (_is_word(text[end - 1]) and end < len(text) and _is_word(text[end])):
            return text[:end]
        if not all(map(_is_word, run)):
            return text[: _word_end(text, end)]  # `(str(str(str`: do not stop inside a name
        # Differs from the first version of this rule, which extended the cut to the end of the
        # word: inside one word that end is the end of the whole loop, so `co_co_co…` passed.
        start = _word_start(text, m.start())
        head = prefix[_word_start(prefix, len(prefix)) :] if start == 0 else ""
        word = text[start : _word_end(text, m.end())]
        if _ordinary_word(head + word, unit, len(run) // len(unit)):
            continue
        return text[: start + _known_name_end(head, word, prefix, suffix)]
    return text


def postprocess(
    completion: str, prefix: str, suffix: str, language: str | None, *, multiline_allowed: bool
) -> str:
    """The suggestion to show for a raw `completion` between `prefix` and `suffix` (rules in the module
    docstring); "" when nothing useful is left."""
    language = normalize_language(language)
    text = _cut_runaway_repetition(completion.replace("\r\n", "\n"), prefix, suffix)
    text = _block_and_brackets(text, prefix, suffix, language, multiline_allowed)
    text = _drop_suffix_repeat(text, suffix)
    text = _strip_trailing(text, prefix, suffix)
    return text if text.strip() else ""
