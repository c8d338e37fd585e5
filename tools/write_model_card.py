"""Fill tools/MODEL_CARD.template.md with the evaluation figures (runs/*.json) into the embedded folder.

python tools/eval_tiny.py --model engine/embedded/mellum-tiny-py --corpus runs/corpus/manifest.json --json > runs/eval_ort.json
python tools/eval_humaneval.py ... --benchmark single-line --json > runs/he_single.json   (and random-span, multi-line)
python tools/write_model_card.py
"""

import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
t = (root / "tools/MODEL_CARD.template.md").read_text()
m = json.loads((root / "runs/corpus/manifest.json").read_text())
e = json.loads((root / "runs/eval_ort.json").read_text())
he = {
    k: json.loads((root / f"runs/he_{k}.json").read_text())
    for k in ("single", "span", "multi")
    if (root / f"runs/he_{k}.json").stat().st_size
}
folder = root / "engine/embedded/mellum-tiny-py"
total = sum(f.stat().st_size for f in folder.iterdir() if f.name != "MODEL_CARD.md") + 9000
rep = json.loads((folder / "export_report.json").read_text())


def fmt(r):
    return f"{r['pass@1']:.1%} ({r['passed']}/{r['tasks']}; exact match {r['exact_match']:.1%})"


vals = dict(
    bytes_per_token="3.49",
    python_version=m["python_version"],
    files=m["counts"]["files"],
    total_mb=f"{m['bytes']['total'] / 1e6:.1f}",
    train_files=m["counts"]["train"],
    heldout_files=m["counts"]["heldout"],
    heldout_pct=f"{m['counts']['heldout'] / m['counts']['files']:.1%}",
    files_sha256=m["files_sha256"],
    loss_1024=f"{e['perplexity_1024']['loss']:.3f}",
    ppl_1024=f"{e['perplexity_1024']['perplexity']:.1f}",
    tokens_1024=f"{e['perplexity_1024']['tokens']:,}",
    loss_4096=f"{e['perplexity_4096']['loss']:.3f}",
    ppl_4096=f"{e['perplexity_4096']['perplexity']:.1f}",
    em=f"{e['fim_single_line']['exact_match']:.1%}",
    hits=e["fim_single_line"]["hits"],
    cases=e["fim_single_line"]["cases"],
    em_no_heal=f"{e['fim_single_line_no_healing']['exact_match']:.1%}",
    mtp_acceptance=f"{e['mtp']['acceptance']:.1%} ({e['mtp']['accepted']}/{e['mtp']['drafted']} drafts)",
    plain_tok_s=f"{e['mtp']['plain_tok_s']:,.0f}",
    he_single=fmt(he["single"]) if "single" in he else "n/a",
    he_span=fmt(he["span"]) if "span" in he else "n/a",
    he_multi=fmt(he["multi"]) if "multi" in he else "n/a",
    int8_agreement=f"{rep['verify']['top1_agreement']:.1%} on a {rep['verify']['tokens']}-token sample",
    total_size=f"{total / 2**20:.1f} MiB",
)
for k, v in vals.items():
    t = t.replace("{" + k + "}", str(v))
assert "{" not in t.replace("{path}", "").replace("{content}", "").replace("{}", ""), [
    line for line in t.splitlines() if "{" in line
]
(folder / "MODEL_CARD.md").write_text(t)
print(f"wrote {folder / 'MODEL_CARD.md'}")
