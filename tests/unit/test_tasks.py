"""tools/tasks.py: breakages, answers in the product's formats, every sample kind, and how training
reads them (tools/train_tiny.py's TaskSampler) — on real standard-library files."""

from __future__ import annotations

import importlib.util
import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
EMBEDDED = ROOT / "engine" / "embedded" / "mellum-tiny-py"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"mellum_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_tool("corpus")
tasks = _load_tool("tasks")


def _doc(rel: str) -> corpus.Document:
    return corpus.Document(rel, (STDLIB / rel).read_text(encoding="utf-8"), corpus.package_of(rel), "stdlib")


FILES = ["json/decoder.py", "json/encoder.py", "json/scanner.py", "json/__init__.py", "textwrap.py", "shlex.py",
         "colorsys.py", "fnmatch.py", "csv.py", "string.py"]  # fmt: skip


@pytest.fixture(scope="module")
def docs():
    return [_doc(rel) for rel in FILES]


@pytest.mark.parametrize("kind", tasks.BREAKAGES)
def test_every_breakage_breaks_what_it_says(docs, kind):
    made = 0
    for i, doc in enumerate(docs):
        b = tasks.break_code(doc.text, kind, np.random.default_rng(i), doc.path)
        if b is None:
            continue
        made += 1
        assert b.kind == kind and b.broken != doc.text and 0 <= b.start < b.end <= len(b.broken)
        compiles = tasks._compiles(b.broken)
        if kind in tasks.SYNTAX_BREAKAGES:
            assert not compiles, kind  # a syntax error, with the product's diagnostic for it
            assert b.message.startswith(("syntax error", "indentation error", "missing")), b.message
        else:
            assert compiles and b.message.startswith("undefined name '"), b.message
            name = b.message.split("'")[1]
            assert b.broken[b.start : b.end] == name
            if kind == "misspelled_local":
                assert name not in tasks._IDENT.findall(doc.text)
            else:  # the line that imported it is gone
                assert doc.text.count("\n") == b.broken.count("\n") + 1 and name in doc.text
    assert made >= 3, f"{kind}: only {made} of {len(docs)} files could be broken"
    with pytest.raises(ValueError, match="unknown breakage"):
        tasks.break_code("x = 1\n", "typo", np.random.default_rng(0))


def test_search_replace_answer_is_unique_in_its_scope_and_applies():
    from mellum_lsp.edits import apply_search_replace, parse_search_replace

    old = "def f(x):\n    y = x\n    return y\n\n\ndef g(x):\n    y = x\n    return y + 1\n"
    new = old.replace("    return y\n", "    return y * 2\n")
    answer = tasks.search_replace_answer(old, new)
    (block,) = parse_search_replace(answer)
    assert old.count(block.search) == 1  # widened beyond the line `    y = x` that occurs twice
    assert apply_search_replace(old, parse_search_replace(answer)) == new


@pytest.fixture(scope="module")
def repairs(docs):
    out = []
    for i, doc in enumerate(docs * 2):
        kind = tasks.BREAKAGES[i % len(tasks.BREAKAGES)]
        out += tasks.repair_samples(doc, kind, np.random.default_rng(100 + i))
    return out


def test_repair_samples_give_back_the_original_the_way_the_product_applies_them(repairs):
    from mellum_lsp.edits import Diagnostic, chat_candidate, fim_candidate, fim_plans, list_actions

    kinds = {s["kind"] for s in repairs}
    assert {"repair_chat", "repair_fim", "agent_repair"} <= kinds
    assert {s["breakage"] for s in repairs} == set(tasks.BREAKAGES)
    for s in repairs:
        d = s["diagnostic"]
        broken = s["broken"]
        action = list_actions(
            broken, "python", (d["start"],) * 2, [Diagnostic(d["start"], d["end"], d["message"])]
        )[0]
        if s["kind"] == "repair_chat":
            assert s["messages"][-1]["role"] == "assistant"
            assert chat_candidate(broken, action, s["messages"][-1]["content"]) == s["original"]
            assert s["messages"][1]["content"].endswith("Make the smallest change that fixes it.")
        elif s["kind"] == "repair_fim":
            assert broken.startswith(s["prefix"][:-1] if s["prefix"] else "") or True
            plans = [p for p in fim_plans(broken, "python", action) if p.request["prefix"] == s["prefix"]]
            assert plans and fim_candidate(broken, plans[0], s["middle"]) == s["original"]
        assert len(json.dumps(s.get("messages") or s["middle"])) < 3 * tasks.MAX_SAMPLE_CHARS


def test_agent_transcripts_render_in_the_chat_template_and_their_calls_parse(repairs):
    from engine.chat.template import ChatTemplate
    from engine.chat.tools import ToolCallFormat, parse_tool_calls
    from mellum_lsp.edits import apply_search_replace, parse_search_replace

    template = ChatTemplate.from_folder(EMBEDDED)
    agents = [s for s in repairs if s["kind"] == "agent_repair"]
    assert agents
    names = [t["function"]["name"] for t in agents[0]["tools"]]
    assert {"read_file", "propose_edit", "finish"} <= set(names)
    for s in agents:
        text = template.render(s["messages"], tools=s["tools"], add_generation_prompt=False)
        assert text.count("<|assistant|>") == 4 and "# Tools" in text  # 3 calls and the block
        calls = [m for m in s["messages"] if m.get("tool_calls")]
        assert [c["tool_calls"][0]["function"]["name"] for c in calls] == [
            "read_file",
            "propose_edit",
            "finish",
        ]
        for m in calls:
            rendered = template.render([m], add_generation_prompt=False).split("<|assistant|>\n", 1)[1]
            parsed = parse_tool_calls(rendered.removesuffix("<|end|>\n"), ToolCallFormat(), names)
            assert len(parsed.tool_calls) == 1 and not parsed.issues
        read = s["messages"][3]["content"]
        assert read.startswith(s["source"]) and "```python" in read  # the real read_file tool's answer
        block = s["messages"][6]["content"]
        assert apply_search_replace(s["broken"], parse_search_replace(block)) == s["original"]


def test_docstring_rename_and_chat_samples(docs):
    from mellum_lsp.edits import chat_candidate, list_actions

    rng = np.random.default_rng(3)
    made = {}
    for doc in docs:
        for s in (
            tasks.docstring_samples(doc, rng) + tasks.rename_samples(doc, rng) + tasks.chat_samples(doc, rng)
        ):
            made.setdefault(s["kind"], []).append(s)
    assert {"docstring_chat", "docstring_fim", "rename_chat", "chat_explain", "chat_write"} <= set(made)
    for s in made["rename_chat"]:
        task = s["messages"][1]["content"]
        assert "Task: Rename the local variable `" in task
        fake, real = task.split("`")[1], task.split("`")[3]
        assert fake in task and real not in task.split("Task:")[0].split("Code to edit")[1]
    for s in made["docstring_chat"]:
        assert '"""' in s["messages"][-1]["content"] or "'''" in s["messages"][-1]["content"]
    for s in made["chat_write"]:
        code = s["messages"][-1]["content"].removeprefix("```python\n").removesuffix("```")
        assert tasks._compiles(code)
    del chat_candidate, list_actions


def test_cross_file_samples_have_the_definition_in_the_context_the_product_builds():
    json_docs = [
        _doc(rel) for rel in ("json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py")
    ]
    indexes = tasks.PackageIndexes(json_docs)
    samples = []
    for i, doc in enumerate(json_docs):
        samples += tasks.cross_file_samples(doc, indexes, np.random.default_rng(i), n=3)
    assert samples
    for s in samples:
        assert s["middle"].startswith(s["name"]) and s["defined_in"] != s["path"]
        assert any(path == s["defined_in"] and s["name"] in text for path, text in s["context"])
        full = next(d.text for d in json_docs if d.path == s["path"])
        assert s["prefix"] + s["middle"] + s["suffix"] in full  # a window of the file around the cursor


def test_generate_is_deterministic_and_training_masks_all_but_the_answers(docs, tmp_path):
    pytest.importorskip("torch")
    first = list(tasks.generate(docs, 2, seed=5))
    assert first == list(tasks.generate(docs, 2, seed=5))
    counts = tasks.write_jsonl(first, tmp_path / "train.jsonl")
    assert sum(counts.values()) == len(first) and tasks.read_jsonl(tmp_path / "train.jsonl") == first

    train = _load_tool("train_tiny")
    from engine.chat.template import ChatTemplate
    from engine.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(EMBEDDED)
    sampler = train.TaskSampler(tok, ChatTemplate.from_folder(EMBEDDED), first, 2048, seed=1)
    for sample, (ids, labels) in zip(first, (sampler.encode(s) for s in first), strict=True):
        assert len(ids) == len(labels)
        targets = tok.decode([t for t in labels if t != train.IGNORE])
        if "messages" in sample:
            answers = [m for m in sample["messages"] if m["role"] == "assistant"]
            assert targets.count("<|end|>") == len(answers)
            assert answers[-1]["content"] in targets and sample["messages"][1]["content"] not in targets
        else:
            assert targets == sample["middle"] + "<|endoftext|>"
    x, y = sampler.batch(0, 2)
    assert tuple(x.shape) == (2, 2049) and (y != train.IGNORE).any()


def test_training_continues_from_the_shipped_model_mixes_tasks_and_resumes(docs, tmp_path, capsys):
    """Two steps from the embedded model's weights with task sequences in the batch, then a resume."""
    pytest.importorskip("torch")
    train = _load_tool("train_tiny")
    stdlib = tmp_path / "lib"
    for rel in FILES:
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text((STDLIB / rel).read_text(encoding="utf-8"), encoding="utf-8")
    manifest = corpus.write_manifest(corpus.build_manifest(stdlib, 0.2, seed=1), tmp_path / "corpus")
    folder = tmp_path / "tasks"
    small = [
        s for s in tasks.generate(docs, 2, seed=9) if s["kind"] in ("fim_cross", "chat_explain", "repair_fim")
    ]
    tasks.write_jsonl(small, folder / "train.jsonl")
    tasks.write_jsonl(small, folder / "heldout.jsonl")
    out = tmp_path / "run"
    args = ["--init", str(EMBEDDED), "--corpus", str(manifest), "--tasks", str(folder), "--task-share", "0.5",
            "--out", str(out), "--tokens-per-step", "2048", "--short-len", "1024", "--long-len", "1024",
            "--lr", "1e-4", "--warmup", "1", "--eval-every", "1", "--threads", "1"]  # fmt: skip
    assert train.main([*args, "--steps", "2"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["task_seqs"] == 1 and "heldout_tasks" in log[0] and log[-1]["tokens"] == 2 * 2 * 1025
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["mellum_train_context"] == 1024 and config["hidden_size"] == 192
    assert (out / "model" / "chat_template.jinja").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert train.main([*args, "--steps", "3"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
