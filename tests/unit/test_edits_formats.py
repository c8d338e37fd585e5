"""Edit formats of model answers: search/replace blocks, fenced code, and their grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from mellum_lsp.edits.formats import (
    SEARCH_REPLACE_LARK,
    EditFormatError,
    SearchReplace,
    apply_search_replace,
    extract_code_block,
    parse_search_replace,
    replace_region,
    search_replace_grammar,
)

TOKENIZER = Path(__file__).parents[2] / "engine" / "embedded" / "mellum-tiny-py" / "tokenizer.json"

CODE = """class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
"""


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


# --- parsing --------------------------------------------------------------------------------------------


def test_parse_blocks_with_prose_and_fences_around():
    answer = (
        "Here is the fix:\n```python\n"
        + block("    def pop(self):\n", "    def pop(self) -> object:\n")
        + "\n"
        + block("a\n", "")
        + "```\nDone."
    )
    assert parse_search_replace(answer) == [
        SearchReplace("    def pop(self):\n", "    def pop(self) -> object:\n"),
        SearchReplace("a\n", ""),
    ]


def test_parse_crlf_answer_and_marker_variants():
    answer = "<<<<<<<< SEARCH\r\nx = 1\r\n========\r\nx = 2\r\n>>>>>>>> REPLACE"
    assert parse_search_replace(answer) == [SearchReplace("x = 1\n", "x = 2\n")]


@pytest.mark.parametrize(
    "answer, message",
    [
        ("just prose", "has no <<<<<<< SEARCH"),
        ("<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n", "block 1 (line 1 of the answer) has no ======= divider"),
        (
            "<<<<<<< SEARCH\nx\n=======\ny\n",
            "block 1 (line 1 of the answer) is cut off before >>>>>>> REPLACE",
        ),
        (
            block("a\n", "b\n") + "<<<<<<< SEARCH\nx\n",
            "block 2 (line 6 of the answer) has no ======= divider",
        ),
        (
            "<<<<<<< SEARCH\nx\n=======\ny\n=======\n",
            "block 1 (line 1 of the answer) has no >>>>>>> REPLACE end",
        ),
    ],
)
def test_malformed_answers_are_errors_that_say_where(answer, message):
    with pytest.raises(EditFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_search_replace(answer)


# --- applying -----------------------------------------------------------------------------------------------


def test_exact_match():
    blocks = parse_search_replace(
        block("        return self.items.pop()\n", "        return self.items.pop(0)\n")
    )
    assert apply_search_replace(CODE, blocks) == CODE.replace("pop()\n", "pop(0)\n")


def test_blocks_apply_in_order_on_the_result_of_the_previous():
    blocks = [SearchReplace("self.items = []\n", "self.items = list()\n"), SearchReplace("list()", "[]")]
    assert apply_search_replace(CODE, blocks) == CODE


def test_not_found_names_the_block_and_the_text():
    blocks = [SearchReplace("x\n", "y\n"), SearchReplace("    def peek(self):\n", "")]
    with pytest.raises(EditFormatError, match=r"^block 1: the SEARCH text is not in the code to edit: `x`$"):
        apply_search_replace(CODE, blocks)
    with pytest.raises(EditFormatError, match=r"^block 1: .*`def peek\(self\):`"):
        apply_search_replace(CODE, blocks[1:])


def test_found_twice_is_an_error_with_the_count():
    with pytest.raises(EditFormatError, match=r"block 1: the SEARCH text `def` is found 3 times"):
        apply_search_replace(CODE, [SearchReplace("def", "async def")])
    with pytest.raises(EditFormatError, match="found 2 times"):  # also in the tolerant pass
        apply_search_replace("a  \nb\na \nb\n", [SearchReplace("a\nb\n", "c\n")])
    # an exact match wins over tolerant ones
    assert apply_search_replace("a  \nb\na\nb\n", [SearchReplace("a\nb\n", "c\n")]) == "a  \nb\nc\n"


def test_trailing_whitespace_is_tolerated():
    text = "x = 1   \ny = 2\t\nz = 3\n"
    assert apply_search_replace(text, [SearchReplace("x = 1\ny = 2\n", "x = 10\ny = 20\n")]) == (
        "x = 10\ny = 20\nz = 3\n"
    )


def test_a_dedented_search_matches_and_the_replacement_is_reindented():
    search = "def push(self, item):\n    self.items.append(item)\n"
    replace = 'def push(self, item):\n    """Push an item."""\n    self.items.append(item)\n'
    result = apply_search_replace(CODE, [SearchReplace(search, replace)])
    assert (
        '    def push(self, item):\n        """Push an item."""\n        self.items.append(item)\n' in result
    )
    # over-indented SEARCH text works the other way round
    over = "        def pop(self):\n            return self.items.pop()\n"
    result = apply_search_replace(
        CODE, [SearchReplace(over, "        def pop(self):\n            return None\n")]
    )
    assert result.endswith("    def pop(self):\n        return None\n")


def test_inconsistent_indentation_does_not_match():
    search = "    def pop(self):\n    return self.items.pop()\n"  # second line dedented by 4, first not
    with pytest.raises(EditFormatError, match="not in the code"):
        apply_search_replace(CODE, [SearchReplace(search, "")])


def test_blank_lines_around_the_search_are_ignored_when_needed():
    search = "\n    def pop(self):\n        return self.items.pop()\n\n"
    result = apply_search_replace(CODE, [SearchReplace(search, "\n    def pop(self):\n        return 1\n\n")])
    assert result.endswith("    def pop(self):\n        return 1\n")


def test_last_line_without_newline():
    text = "a = 1\nb = 2"
    assert apply_search_replace(text, [SearchReplace("b = 2\n", "b = 3\n")]) == "a = 1\nb = 3"


def test_scope_limits_the_search_and_moves_along():
    text = "x = 1\n\ndef f():\n    x = 1\n    return x\n"
    scope = (text.index("def f"), len(text))
    result = apply_search_replace(text, [SearchReplace("    x = 1\n", "    x = 2\n")], scope)
    assert result == "x = 1\n\ndef f():\n    x = 2\n    return x\n"
    with pytest.raises(EditFormatError, match="not in the code to edit"):
        apply_search_replace(text, [SearchReplace("x = 1\n\ndef f():\n", "")], scope)
    grown = [
        SearchReplace("    x = 1\n", "    x = 1\n    y = 2\n"),
        SearchReplace("return x\n", "return x + y\n"),
    ]
    assert apply_search_replace(text, grown, scope).endswith("    y = 2\n    return x + y\n")
    with pytest.raises(ValueError, match="scope 3..99"):
        apply_search_replace(text, grown, (3, 99))


def test_empty_search():
    assert apply_search_replace("", [SearchReplace("", "x = 1\n")]) == "x = 1\n"
    assert apply_search_replace("a\n\n\nb\n", [SearchReplace("", "x\n")], (2, 3)) == "a\nx\n\nb\n"
    with pytest.raises(EditFormatError, match="block 1: the SEARCH section is empty"):
        apply_search_replace(CODE, [SearchReplace("", "x\n")])


def test_crlf_document_keeps_crlf():
    text = CODE.replace("\n", "\r\n")
    blocks = parse_search_replace(block("    def pop(self):\n", "    def pop(self) -> object:\n"))
    result = apply_search_replace(text, blocks)
    assert result == CODE.replace("def pop(self):", "def pop(self) -> object:").replace("\n", "\r\n")
    tolerant = [
        SearchReplace("def pop(self):\n    return self.items.pop()\n", "def pop(self):\n    return 0\n")
    ]
    assert apply_search_replace(text, tolerant).endswith("    def pop(self):\r\n        return 0\r\n")


def test_unicode_text():
    text = "greeting = 'こんにちは 👋'\nfarewell = '再见'\n"
    blocks = [SearchReplace("farewell = '再见'\n", "farewell = '再见 👋'\n")]
    assert apply_search_replace(text, blocks) == "greeting = 'こんにちは 👋'\nfarewell = '再见 👋'\n"


# --- a fenced code block replacing a region ---------------------------------------------------------


def test_extract_code_block():
    assert extract_code_block("Sure:\n```python\nx = 1\n```\nThat's it.") == "x = 1\n"
    answer = "```py\ndef f():\n    return 1\n```\nUsage:\n```\nf()\n```"
    assert extract_code_block(answer) == "def f():\n    return 1\n"  # the longest block
    assert extract_code_block("~~~\na\r\nb\r\n~~~") == "a\nb\n"
    with pytest.raises(EditFormatError, match="no fenced code block"):
        extract_code_block("x = 1")
    with pytest.raises(EditFormatError, match="opened on line 2 of the answer is not closed"):
        extract_code_block("Here:\n```python\nx = 1\n")


def test_replace_region_keeps_newline_indentation_and_line_ends():
    start = CODE.index("    def pop")
    scope = (start, len(CODE))
    code = "def pop(self):\n    if not self.items:\n        return None\n    return self.items.pop()"
    result = replace_region(CODE, scope, code)
    assert result.endswith("    def pop(self):\n        if not self.items:\n            return None\n"
                           "        return self.items.pop()\n")  # fmt: skip
    crlf = CODE.replace("\n", "\r\n")
    crlf_scope = (crlf.index("    def pop"), len(crlf))
    assert replace_region(crlf, crlf_scope, code) == result.replace("\n", "\r\n")
    # a region inside a line, without a newline: none is added
    assert replace_region("x = f(a, b)\n", (6, 10), "b, a\n") == "x = f(b, a)\n"


# --- grammars -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llg():
    llguidance = pytest.importorskip("llguidance")
    tokenizers = pytest.importorskip("tokenizers")
    return llguidance, llguidance.LLTokenizer(str(TOKENIZER)), tokenizers.Tokenizer.from_file(str(TOKENIZER))


def _accepts(llg, lark: str, answer: str) -> bool:
    llguidance, tokenizer, hf = llg
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
    ok = matcher.consume_tokens(hf.encode(answer, add_special_tokens=False).ids)
    return ok and matcher.is_accepting()


def test_the_grammar_compiles(llg):
    llguidance, tokenizer, _ = llg
    for lark in (SEARCH_REPLACE_LARK, search_replace_grammar(CODE)):
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer) == ""


def test_the_grammar_accepts_what_the_parser_reads(llg):
    answers = [
        block("    def pop(self):\n", "    def pop(self) -> object:\n"),
        block("a\n", "b\n") + "\n" + block("c\n", ""),
        block("", "new\n"),
    ]
    for answer in answers:
        assert _accepts(llg, SEARCH_REPLACE_LARK, answer), answer
        assert parse_search_replace(answer)
    for wrong in ["prose first\n" + answers[0], block("a\n", "=======\n"), "<<<<<<< SEARCH\na\n=======\nb\n"]:
        assert not _accepts(llg, SEARCH_REPLACE_LARK, wrong), wrong


def test_the_scoped_grammar_only_allows_runs_of_scope_lines(llg):
    scope = 'def f(x):\n    s = "a\\"b\\\\"  # 日本 😀\n\tif x:\n        return x\n    return -x'
    lark = search_replace_grammar(scope)
    good = block('    s = "a\\"b\\\\"  # 日本 😀\n\tif x:\n', "    s = 1\n")
    assert _accepts(llg, lark, good)
    assert apply_search_replace(scope, parse_search_replace(good)).startswith("def f(x):\n    s = 1\n")
    assert _accepts(llg, lark, block("    return -x\n", "    return x\n"))  # last line, no newline in scope
    assert not _accepts(llg, lark, block("    return y\n", "    return x\n"))  # not a scope line
    assert not _accepts(llg, lark, block("def f(x):\n\tif x:\n", ""))  # lines, but not consecutive
    assert search_replace_grammar("") == SEARCH_REPLACE_LARK
