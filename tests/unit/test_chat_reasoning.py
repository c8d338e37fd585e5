"""engine/chat/reasoning.py: the streaming reasoning/content splitter and dropping old reasoning."""

from __future__ import annotations

import pytest

from engine.chat.reasoning import (
    ReasoningMarkers,
    ReasoningSplitter,
    drop_reasoning,
    opens_reasoning,
    partial_marker,
    split_reasoning,
)
from engine.chat.template import ChatTemplate
from engine.embedded import embedded_model_dir


def _stream(pieces, **kwargs) -> tuple[str, str, list]:
    splitter = ReasoningSplitter(**kwargs)
    events = [e for p in pieces for e in splitter.feed(p)] + splitter.flush()
    text = {"reasoning": "", "content": ""}
    for channel, piece in events:
        assert piece, "no empty events"
        text[channel] += piece
    return text["reasoning"], text["content"], events


CASES = [
    # (answer, in_reasoning, reasoning, content)
    ("<think>\nplan: add 1\n</think>\n\nThe answer is 2.", False, "plan: add 1\n", "The answer is 2."),
    ("  \n<think>a<b</think>c", False, "a<b", "c"),
    ("no trace here, <think> is just text", False, "", "no trace here, <think> is just text"),
    ("  plain answer", False, "", "  plain answer"),
    ("still thinking when the tokens ran out <", False, "", "still thinking when the tokens ran out <"),
    ("<think>never closed </thi", False, "never closed </thi", ""),
    ("opened by the prompt</think>answer", True, "opened by the prompt", "answer"),
    ("\n</think>\nanswer with </think> inside", True, "", "answer with </think> inside"),
    ("<th", False, "", "<th"),
    ("", False, "", ""),
]


@pytest.mark.parametrize(("answer", "in_reasoning", "reasoning", "content"), CASES)
def test_every_split_of_the_stream_gives_the_same_channels(answer, in_reasoning, reasoning, content):
    assert split_reasoning(answer, in_reasoning=in_reasoning) == (reasoning, content)
    assert _stream(list(answer), in_reasoning=in_reasoning)[:2] == (reasoning, content)
    for cut in range(len(answer) + 1):
        assert _stream([answer[:cut], answer[cut:]], in_reasoning=in_reasoning)[:2] == (reasoning, content)


def test_text_is_released_as_soon_as_it_cannot_be_a_marker():
    splitter = ReasoningSplitter()
    assert splitter.feed("<thi") == []  # could still become <think>
    assert splitter.feed("nk>step one") == [("reasoning", "step one")]
    assert splitter.feed(" two </th") == [("reasoning", " two ")]  # "</th" held back
    assert splitter.in_reasoning
    assert splitter.feed("ink>\n") == []
    assert not splitter.in_reasoning
    assert splitter.feed("done") == [("content", "done")]
    assert splitter.feed("<think>") == [("content", "<think>")]  # a trace only opens the answer
    assert splitter.flush() == []


def test_events_of_one_piece_are_merged_per_channel():
    _, _, events = _stream(["<think>x</think>y", "z"])
    assert events == [("reasoning", "x"), ("content", "y"), ("content", "z")]


def test_custom_markers():
    markers = ReasoningMarkers("[[plan]]", "[[/plan]]")
    assert split_reasoning("[[plan]]A[[/pl]]B[[/plan]] C", markers) == ("A[[/pl]]B", "C")
    assert _stream(list("[[plan]]A[[/plan]]C"), markers=markers)[:2] == ("A", "C")
    with pytest.raises(ValueError, match="two different non-empty strings"):
        ReasoningMarkers("<t>", "<t>")


def test_partial_marker():
    assert partial_marker("abc</th", "</think>") == 4
    assert partial_marker("abc<", "</think>") == 1
    assert partial_marker("abc", "</think>") == 0
    assert partial_marker("</think>", "</think>") == 0  # a whole marker is found, not held


def test_a_prompt_that_opens_the_trace():
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking switched off
    assert not opens_reasoning("<|assistant|>\n")


# A Qwen3-like template that renders the reasoning of the last assistant turn only.
KEEPS = (
    "{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>"
    "{% endif %}{{ m.content }}</{{ m.role }}>{% endfor %}"
)
TURNS = [
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2", "reasoning_content": "one plus one"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>two plus two</think>\n4"},
]


def test_reasoning_is_dropped_from_earlier_turns_unless_the_template_reads_it():
    embedded = ChatTemplate.from_folder(embedded_model_dir())
    keeps = ChatTemplate.from_source(KEEPS)
    assert not embedded.keeps_reasoning and keeps.keeps_reasoning
    dropped = drop_reasoning(TURNS, keep=embedded.keeps_reasoning)
    assert dropped[1] == {"role": "assistant", "content": "2"}
    assert dropped[3] == {"role": "assistant", "content": "4"}
    assert dropped[0] == TURNS[0] and "reasoning_content" in TURNS[1]  # inputs untouched
    text = embedded.render(dropped, add_generation_prompt=False)
    assert "one plus one" not in text and "two plus two" not in text
    kept = drop_reasoning(TURNS, keep=keeps.keeps_reasoning)
    assert kept == TURNS
    assert "<assistant><think>one plus one</think>2</assistant>" in keeps.render(kept)
