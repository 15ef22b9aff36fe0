"""What the default downstream tasks cost: seconds per task for one model at the default limit.

The default set (``slimformer.spec.evaluation.DEFAULT_TASKS``: ARC-Easy, HellaSwag, PIQA,
WinoGrande) lives on the Hub, which this machine cannot reach. So the benchmark writes local tasks
in lm-eval's own format with each real task's shape: its prompt template, its number of answer
choices and the mean token lengths of its context and choices (from the tasks' published
statistics, below), filled with WikiText-2 text. lm-eval's cost is one forward per answer choice
(batched 8 at a time), so the shape decides it; the accuracies of such tasks mean nothing and are
not printed.

    python bench/downstream_cost.py [--limit 100] [--model FOLDER]

Prints a table (and writes ``bench/results/downstream_cost.{json,md}``): per task the items, the
requests, the seconds for one model and the seconds per item, with the total for both models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.tables import Table, environment, render_markdown, render_text  # noqa: E402

SHARED = ROOT.parent / "shared"
WIKITEXT = SHARED / "data" / "wikitext2"
MAKE_SMOLLM2 = SHARED / "models" / "make-smollm2"

# Each task's shape: (choices, context tokens, choice tokens, lm-eval's prompt and choice
# template). Mean lengths in Llama-family tokens of the evaluation split (ARC-Easy test questions
# about 22 tokens and answers about 5; HellaSwag validation contexts about 40 and endings about
# 25; PIQA validation goals about 12 and solutions about 25; WinoGrande's partial scoring: about
# 20 tokens of sentence before the blank, about 8 after it, scored for each of 2 fillings).
SHAPES = {
    "arc_easy": (4, 22, 5, "Question: {{context}}\nAnswer:"),
    "hellaswag": (4, 40, 25, "{{context}}"),
    "piqa": (2, 12, 25, "Question: {{context}}\nAnswer:"),
    "winogrande": (2, 20, 8, "{{context}}"),
}
TASK = """task: {name}_shaped
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/{name}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{template}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(folder: Path, tokenizer, words: list[str], items: int) -> list[str]:
    """One local task per shape in ``folder``, ``items`` rows each, its text cut from ``words``
    to each shape's token lengths."""
    at = 0

    def text(tokens: int) -> str:
        nonlocal at
        out, ids = [], 0
        while ids < tokens:
            out.append(words[at % len(words)])
            at += 1
            ids = len(tokenizer(" ".join(out), add_special_tokens=False)["input_ids"])
        return " ".join(out)

    names = []
    for name, (choices, context, choice, template) in SHAPES.items():
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in range(items):
                row = {"context": text(context), "choices": [text(choice) for _ in range(choices)]}
                f.write(json.dumps(row | {"label": i % choices}) + "\n")
        yaml_text = template.replace("\n", "\\n")  # inside YAML's double quotes
        (folder / f"{name}.yaml").write_text(
            TASK.format(name=name, folder=folder, template=yaml_text)
        )
        names.append(f"{name}_shaped")
    return names


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimformer.evaluation.downstream import BATCH_SIZE, TASK_PATHS_ENV, run_tasks
    from slimformer.spec.evaluation import DEFAULT_TASK_LIMIT, DEFAULT_TASKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_TASK_LIMIT)
    parser.add_argument("--model", help="a causal LM folder (default: SmolLM2-135M's fixture)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if set(SHAPES) != set(DEFAULT_TASKS):
        sys.exit(f"downstream_cost: the shapes {sorted(SHAPES)} are not the default set")
    if not WIKITEXT.exists():
        sys.exit(f"downstream_cost: needs {WIKITEXT} (../shared next to the repo)")
    model_path = (
        args.model
        or (
            subprocess.run([str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True)
            .stdout.decode()
            .strip()
            .splitlines()[-1]
        )
    )
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    words = (WIKITEXT / "test.txt").read_text().split()
    rows, results = [], {"environment": environment(), "model": str(model_path), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        names = write_tasks(Path(tmp), tokenizer, words, args.limit)
        os.environ[TASK_PATHS_ENV] = tmp
        run_tasks(model, tokenizer, [names[0]], 8)  # lm-eval's set-up, once, not timed
        for name, (choices, *_rest) in zip(names, SHAPES.values(), strict=True):
            start = time.perf_counter()
            run_tasks(model, tokenizer, [name], args.limit)
            seconds = time.perf_counter() - start
            results["tasks"][name] = {"items": args.limit, "choices": choices, "s": seconds}
            rows.append(
                [
                    name.removesuffix("_shaped"),
                    f"{args.limit}",
                    f"{args.limit * choices}",
                    f"{seconds:.1f}",
                    f"{seconds / args.limit:.3f}",
                ]
            )
    total = sum(t["s"] for t in results["tasks"].values())
    results["both_models_s"] = 2 * total
    rows.append(["all, one model", "", "", f"{total:.1f}", ""])
    rows.append(["all, both models", "", "", f"{2 * total:.1f}", ""])
    table = Table(
        title=f"The default downstream tasks' cost, {Path(model_path).name}, limit {args.limit}",
        headers=["task (shape)", "items", "requests", "s, one model", "s / item"],
        rows=rows,
        notes=[
            "local tasks with each default task's shape (choices, token lengths, prompt), "
            f"WikiText-2 text; lm-eval batch {BATCH_SIZE}; {torch.get_num_threads()} threads; "
            f"{model.dtype} weights, as the checkpoint stores them",
        ],
    )
    print(render_text(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "downstream_cost.json").write_text(json.dumps(results, indent=1))
    (out / "downstream_cost.md").write_text(render_markdown(table) + "\n")


if __name__ == "__main__":
    main()
