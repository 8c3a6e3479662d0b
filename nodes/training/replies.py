"""Model-written benign replies for the offline guard's Agent-side training rows.

Why: the Agent check over-flagged ordinary answers on topics with alarming words (killing a process, the
history of the atomic bomb) and any answer that follows a harmful-looking prompt, because the only safe
replies it had seen were refusals and a few hand-written answers. SmolLM2-135M-Instruct (the offline chat
model, run through llama.cpp: measured ~100 tokens/s on 2 free CPU cores, against 26 tokens/s for
transformers' batched generate on the same, then busy, machine) answers the
*safe* prompts of train/ and of contrast.yaml; an answer to a safe prompt is labeled safe. Greedy decoding
makes the file reproducible; it is a cache outside the repository (prompts from train/ are never committed):

    python -m guardgraph.nodes.training.replies --datasets ../shared/datasets/train --out /tmp/replies.jsonl

With ``--compliance`` it also answers train/'s plain harmful requests (:func:`compliance_prompts`), for
``train.py --compliance`` (an experiment, off in the shipped recipe; see README.md).

Needs ``llama-cpp-python`` (installed by ``make test-deps``). An interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardgraph.nodes.training.data import Example, load_contrast, load_train_rows

MAX_REPLY_TOKENS = 72
# safe prompt sources worth answering, with how many prompts each contributes
REPLY_SOURCES = {
    "wildguardtest_prompt_subset": 80,  # adversarially benign: the best look-alikes in train/
    "jailbreakbench_behaviors": 50,  # benign twins of its harmful behaviors
    "arena_hard": 30,
    "nq_open": 20,
}
CONTRAST_PER_GROUP = 20
# direct harmful requests the chat model answers too: its compliant answers become unsafe Agent rows
COMPLIANCE_SOURCES = ("advbench_harmful_behaviors", "jailbreakbench_behaviors", "strongreject")


def reply_prompts(examples: Sequence[Example], seed: int = 0) -> list[Example]:
    """The safe User rows to answer: capped per train/ source, ``CONTRAST_PER_GROUP`` per contrast group.

    Each source is shuffled on its own seed, so a smaller cap picks a prefix of a larger one (and the replies
    already in the cache stay in use)."""
    by_source: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        if e.label == 0 and e.response is None and len(e.prompt) <= 600:
            by_source[e.source].append(e)
    picked: list[Example] = []
    for source in sorted(by_source):
        cap = CONTRAST_PER_GROUP if source.startswith("contrast:") else REPLY_SOURCES.get(source, 0)
        rows = sorted(by_source[source], key=lambda e: e.prompt)
        random.Random(f"{seed}:{source}").shuffle(rows)
        picked += rows[:cap]
    return picked


def compliance_prompts(examples: Sequence[Example]) -> list[Example]:
    """The unsafe User rows of :data:`COMPLIANCE_SOURCES` (plain harmful requests, no jailbreak wrapping)."""
    return [
        e
        for e in examples
        if e.label == 1 and e.response is None and e.source in COMPLIANCE_SOURCES and len(e.prompt) <= 600
    ]


def load_replies(path: Path) -> dict[str, str]:
    """prompt -> reply, from a file written by :func:`generate`."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return {r["prompt"]: r["reply"] for r in rows if r.get("reply")}


def generate(prompts: Sequence[str], out: Path, threads: int = 2) -> dict[str, str]:
    """Answer every prompt not yet in ``out`` with SmolLM2 (greedy) and append to ``out``.

    A complete ``out`` is all it reads: llama.cpp and the chat model are needed only for missing answers."""
    done = load_replies(out)
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    if not todo:
        return done
    from llama_cpp import Llama

    from guardgraph.nodes.shipped_models import smollm2_gguf_path

    llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=768, n_threads=threads, verbose=False, seed=0)
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for i, prompt in enumerate(todo, 1):
            answer: Any = llm.create_chat_completion(
                [{"role": "user", "content": prompt}], max_tokens=MAX_REPLY_TOKENS, temperature=0.0
            )
            reply = (answer["choices"][0]["message"]["content"] or "").strip()
            done[prompt] = reply
            handle.write(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False) + "\n")
            handle.flush()
            if i % 50 == 0:
                print(f"{i}/{len(todo)} replies, {time.time() - started:.0f}s", flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, required=True, help="the train/ folder of the shared datasets")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compliance", action="store_true", help="also answer train/'s plain harmful requests (train.py --compliance)"
    )
    args = parser.parse_args(argv)
    examples = load_train_rows(args.datasets, seed=args.seed) + load_contrast(seed=args.seed)[0]
    to_answer = reply_prompts(examples, seed=args.seed) + (compliance_prompts(examples) if args.compliance else [])
    prompts = list(dict.fromkeys(e.prompt for e in to_answer))
    print(f"{len(prompts)} prompts to answer", flush=True)
    replies = generate(prompts, args.out, threads=args.threads)
    print(f"{sum(p in replies for p in prompts)} replies in {args.out}", flush=True)


if __name__ == "__main__":
    main()
