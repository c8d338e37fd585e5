"""``python -m engine``: generate, chat, plan, serve."""

from __future__ import annotations

import argparse
import json
import sys

from .model.config import PRESETS


def _ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prompt-ids takes comma-separated integers, got {text!r}"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("--prompt-ids is empty")
    return ids


def default_model_dir() -> str:
    from .embedded import embedded_model_dir

    return str(embedded_model_dir())


def cmd_generate(a: argparse.Namespace) -> int:
    from .backends import load_backend
    from .generate import SamplingParams, generate
    from .server import check_model_folder

    model_dir = a.model or default_model_dir()
    check_model_folder(model_dir)
    backend = load_backend(model_dir, a.backend, dtype=a.dtype, threads=a.threads)
    tokenizer = None
    if a.prompt is not None or not a.json:
        from .tokenizer import Tokenizer, validate_against_vocab

        tokenizer = Tokenizer.from_folder(model_dir)
        validate_against_vocab(tokenizer, backend.config.vocab_size)
    if a.prompt_ids is not None:
        prompt = a.prompt_ids
    else:
        prompt = tokenizer.encode(a.prompt)
    if not prompt:
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    vocab = backend.config.vocab_size
    if max(prompt) >= vocab or min(prompt) < 0:
        print(
            f"error: prompt id {max(prompt)} is outside the model's vocabulary (0..{vocab - 1})",
            file=sys.stderr,
        )
        return 2
    stop = tuple(tokenizer.eos_ids) if tokenizer is not None and not a.ignore_eos else ()
    params = SamplingParams(
        max_new_tokens=a.max_new_tokens,
        temperature=0.0 if a.greedy else a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        seed=a.seed,
        stop_ids=stop,
    )
    result = generate(backend, prompt, params)
    text = tokenizer.decode(result.ids) if tokenizer is not None else None
    if a.json:
        out = {
            "ids": result.ids,
            "text": text,
            "logprobs": result.logprobs,
            "timing": {"prefill_s": result.prefill_s, "decode_s": result.decode_s},
            "backend": backend.name,
        }
        print(json.dumps(out))
    else:
        print((a.prompt or "") + (text or ""))
        n = len(result.ids)
        rate = n / result.decode_s if result.decode_s else float("inf")
        print(
            f"\n[{backend.name}] prefill {result.prefill_s * 1e3:.1f} ms, {n} tokens at {rate:.1f} tok/s",
            file=sys.stderr,
        )
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    """One question to the chat model, the answer streamed to the terminal as it decodes."""
    from .jobs import Job
    from .models import ModelSpec
    from .protocol import ProtocolError, parse_params
    from .server import build_parser as serve_parser
    from .server import check_model_folder, load_model

    spec = ModelSpec(url=a.remote) if a.remote else ModelSpec(path=a.model or default_model_dir())
    if spec.path is not None:
        check_model_folder(spec.path)
    serve_args = ["--backend", a.backend] + (["--threads", str(a.threads)] if a.threads else [])
    executor = load_model(spec, serve_parser().parse_args(serve_args))
    messages = ([{"role": "system", "content": a.system}] if a.system else []) + [
        {"role": "user", "content": a.question}
    ]
    try:
        params = parse_params("chat", {"messages": messages, "max_tokens": a.max_tokens,
                                       "temperature": a.temperature, "stream": not a.json})  # fmt: skip
    except ProtocolError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    shown = {"reasoning": False}

    def emit(partial: dict) -> None:
        if partial.get("reasoning"):
            shown["reasoning"] = True
            sys.stderr.write(partial["reasoning"])
        else:
            sys.stdout.write(partial.get("text", ""))
        sys.stdout.flush()

    job = Job(1, "chat", params, emit, lambda r, e: None)
    try:
        result = executor.execute(job)
    except ProtocolError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result))
    else:
        print()
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from .plan import format_plan, load_config, make_plan

    config = load_config(a.config)
    plan = make_plan(config, a.context, kv_dtype_bytes=a.kv_bytes)
    if a.json:
        import dataclasses

        print(json.dumps(dataclasses.asdict(plan)))
    else:
        print(format_plan(plan, a.config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="The mellum-lsp model engine.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate from a prompt")
    g.add_argument("--model", help="model folder (default: the embedded model)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model folder)")
    src.add_argument("--prompt-ids", type=_ids, help="prompt as comma-separated token ids")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--greedy", action="store_true", help="argmax decoding (else temperature/top-p sampling)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text tokens")
    g.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="torch backend weights")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="ask the chat model one question (the answer streams)")
    c.add_argument("question")
    c.add_argument("--model", help="model folder (default: the embedded model)")
    c.add_argument("--remote", metavar="URL", help="an OpenAI-compatible server instead of a folder")
    c.add_argument("--system", help="a system message")
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    c.set_defaults(func=cmd_chat)

    pl = sub.add_parser("plan", help="weight and KV-cache memory of a config")
    pl.add_argument(
        "--config", required=True, help=f"model folder, config.json, or preset ({', '.join(PRESETS)})"
    )
    pl.add_argument("--context", type=int, required=True, help="tokens of context")
    pl.add_argument("--kv-bytes", type=int, default=2, help="bytes per KV element (2 = bf16/fp16)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)

    sub.add_parser("serve", help="run the engine process (python -m engine serve --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the engine process has its own parser
        from .server import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .server import BadArgument

    try:
        return args.func(args)
    except BadArgument as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
