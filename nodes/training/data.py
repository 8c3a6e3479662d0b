"""Training rows for the offline guard: the shared datasets' train/ split (never eval/) plus the contrast sets."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from guardgraph.nodes.guards.sentences import split_sentences
from guardgraph.nodes.guards.windowed import split_windows

CONTRAST_FILE = Path(__file__).resolve().parent / "contrast.yaml"
# Long harmless documents that use alarming words, written for the project (``synth_documents``).
DOCUMENTS_FILE = Path(__file__).resolve().parent / "documents.yaml"

# benign sets that are huge and homogeneous: subsample
BENIGN_CAPS = {
    "gsm8k": 400,
    "clinc150": 1200,
    "banking77": 600,
    "hwu64": 800,
    "nq_open": 1200,
    "arena_hard": 300,
    "ifeval": 250,
    "awesome_chatgpt_prompts": 250,
    "oasst_eval_prompts": 345,
}
# do-not-answer categories that Llama Guard's taxonomy does not call unsafe
DNA_NOT_HAZARD = ("Misinformation Harms", "Human-Chatbot Interaction Harms")
UNLABELED_AS_SAFE = {"awesome_chatgpt_prompts", "oasst_eval_prompts"}
SKIP = {"hh_rlhf_harmless_base_test"}
DNA_RESPONSE_SAFE_CAP = 3000


@dataclass
class Example:
    prompt: str
    response: str | None  # None: a User check of ``prompt``; else an Agent check of ``response``
    label: int  # 1 unsafe
    hazards: tuple[str, ...] = ()
    hazards_known: bool = False  # True: ``hazards`` is the full set (safe rows: empty and known)
    source: str = ""
    group: str = ""  # rows sharing a group go to the same split
    weight: float = 1.0
    meta: dict = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def load_train_rows(train_dir: Path, seed: int = 0) -> list[Example]:
    """Rows of ``train_dir`` as examples (the eval/ directory is refused)."""
    train_dir = Path(train_dir)
    if train_dir.name == "eval" or "/eval/" in f"{train_dir.resolve()}/":
        raise ValueError("the offline guard is never trained on eval/")
    rng = random.Random(seed)
    out: list[Example] = []
    for path in sorted(train_dir.glob("*.jsonl")):
        name = path.stem
        if name in SKIP:
            continue
        rows = _read_jsonl(path)
        if name in BENIGN_CAPS and len(rows) > BENIGN_CAPS[name]:
            rows = rng.sample(rows, BENIGN_CAPS[name])
        if name == "do_not_answer_responses_human":
            safe = [r for r in rows if r["label"] == "safe"]
            rows = [r for r in rows if r["label"] == "unsafe"] + rng.sample(safe, min(DNA_RESPONSE_SAFE_CAP, len(safe)))
        for r in rows:
            label = r["label"]
            if label == "unlabeled":
                if name not in UNLABELED_AS_SAFE:
                    continue
                label = "safe"
            if label not in ("safe", "unsafe"):
                continue
            cats = tuple(r.get("lg3_categories") or ())
            if (
                name == "do_not_answer_prompts"
                and not cats
                and any(any(k in c for k in DNA_NOT_HAZARD) for c in r.get("orig_categories") or ())
            ):
                continue  # "misinformation"/"treat me as a human": not a Llama Guard hazard, skip
            is_unsafe = label == "unsafe"
            response = r.get("response") if r["task"] == "response" else None
            if r["task"] == "response" and not response:
                continue
            out.append(
                Example(
                    prompt=r["prompt"] or "",
                    response=response,
                    label=int(is_unsafe),
                    hazards=cats if is_unsafe else (),
                    hazards_known=(not is_unsafe) or bool(cats),
                    source=name,
                    group=f"{name}:{_norm(r['prompt'] or '')[:200]}",
                    weight=0.5 if name in UNLABELED_AS_SAFE else 1.0,
                )
            )
    return out


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def _slots_in(template: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"\{(\w+)\}", template)))


def _expand(templates: list, slots: dict, cap: int, rng: random.Random):
    """All (template, slot values) combinations, sampled down to ``cap``."""
    combos = []
    for template in templates:
        texts = template if isinstance(template, dict) else {"prompt": template}
        names = list(dict.fromkeys(n for t in texts.values() if isinstance(t, str) for n in _slots_in(t)))
        for values in itertools.product(*(slots[n] for n in names)):
            combos.append((texts, dict(zip(names, values, strict=True))))
    rng.shuffle(combos)
    return combos[:cap]


def load_contrast(path: Path = CONTRAST_FILE, seed: int = 0) -> tuple[list[Example], list[str]]:
    """The project's contrast sets, expanded; also returns the refusal templates."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out: list[Example] = []
    for group in data.get("prompt_groups", []):
        label = int(group["label"] == "unsafe")
        combos = _expand(group["templates"], group["slots"], group.get("max", 10**9), rng)
        weight = 3.0 if len(combos) < 40 else 1.5  # small hand-written groups count more per row
        for texts, values in combos:
            hazards = set(group.get("hazards", ()))
            for slot, table in (group.get("hazards_by_slot") or {}).items():
                if slot in values:
                    hazards.update(table.get(values[slot], ()))
            text = _fill(texts["prompt"], values)
            out.append(
                Example(
                    text,
                    None,
                    label,
                    tuple(sorted(hazards)) if label else (),
                    True,
                    "contrast:" + group["name"],
                    group="contrast:" + group["name"] + ":" + _norm(text),
                    weight=weight,
                )
            )
    for group in data.get("response_groups", []):
        label = int(group["label"] == "unsafe")
        for texts, values in _expand(group["pairs"], group["slots"], group.get("max", 10**9), rng):
            prompt, response = _fill(texts["prompt"], values), _fill(texts["response"], values)
            response_hazards = tuple(texts.get("hazards", ())) if label else ()
            out.append(
                Example(
                    prompt,
                    response,
                    label,
                    response_hazards,
                    not label,
                    "contrast:" + group["name"],
                    group="contrast:" + group["name"] + ":" + _norm(prompt),
                    weight=1.5,
                )
            )
    return out, list(data.get("refusals", []))


def safe_reply(row: Example, reply: str, source: str) -> Example:
    """A safe Agent check of ``reply`` to ``row``'s prompt, in ``row``'s split group (what every synthetic
    safe-reply row is)."""
    return Example(row.prompt, reply, 0, (), True, source, group=row.group)


def synth_refusals(examples: list[Example], refusals: list[str], n: int, seed: int = 0) -> list[Example]:
    """Unsafe prompts answered with a refusal: safe Agent checks (the reply is what is judged)."""
    rng = random.Random(seed)
    unsafe_prompts = [e for e in examples if e.label == 1 and e.response is None]
    picks = rng.sample(unsafe_prompts, min(n, len(unsafe_prompts)))
    return [safe_reply(e, rng.choice(refusals), "synth:refusal") for e in picks]


def split(examples: list[Example], holdout: float = 0.15, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Split by group (the same prompt never lands on both sides)."""
    groups = sorted({e.group for e in examples})
    rng = random.Random(seed)
    held = {g for g in groups if rng.random() < holdout}
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


def generic_benign_texts(path: Path = CONTRAST_FILE, seed: int = 0, n: int = 400) -> list[str]:
    """Safe prompts from the project's own contrast sets: negatives for example-defined categories."""
    rows, _ = load_contrast(path, seed)
    texts = sorted({e.prompt for e in rows if e.label == 0 and e.response is None})
    random.Random(seed).shuffle(texts)
    return texts[:n]


def synth_padded(examples: list[Example], n: int, seed: int = 0, max_chars: int = 320) -> list[Example]:
    """Short prompts buried in benign filler, as the windowed guard sees them (a ~320-character window of a
    long message): unsafe prompts stay unsafe wherever they sit in the window, benign ones stay safe. The
    filler is other benign prompts, whole or as shuffled words. Each row keeps its prompt's group (same split)."""
    rng = random.Random(seed)
    users = [e for e in examples if e.response is None and len(e.prompt) < max_chars // 2]
    benign = [e.prompt for e in users if e.label == 0]
    out: list[Example] = []
    for label in (1, 0):
        pool = [e for e in users if e.label == label]
        for e in rng.sample(pool, min(n, len(pool))):
            budget = max_chars - len(e.prompt) - 1
            parts: list[str] = []
            while sum(len(p) + 1 for p in parts) < budget - 20:
                parts.append(rng.choice(benign))
            filler = " ".join(parts)
            if rng.random() < 0.5:
                words = filler.split()
                rng.shuffle(words)
                filler = " ".join(words)
            filler = filler[: rng.randint(budget // 2, budget)].rsplit(" ", 1)[0]
            where = rng.random()
            text = f"{filler} {e.prompt}" if where < 0.6 else f"{e.prompt} {filler}" if where < 0.8 else None
            if text is None:
                cut = len(filler) // 2
                text = f"{filler[:cut]} {e.prompt} {filler[cut:]}"
            out.append(
                Example(
                    text,
                    None,
                    e.label,
                    e.hazards,
                    e.hazards_known,
                    "synth:padded_" + ("unsafe" if e.label else "safe"),
                    group=e.group,
                    weight=1.0,
                )
            )
    return out


def synth_answers(prompts: list[Example], replies: dict[str, str]) -> list[Example]:
    """Safe prompts with the chat model's answer: safe Agent checks (an answer to a safe prompt is safe), so
    ordinary answers on alarming-sounding topics are seen as what they are. Same group as the prompt."""
    return [safe_reply(e, replies[e.prompt], "synth:answer") for e in prompts if replies.get(e.prompt)]


def synth_mismatched(examples: list[Example], answers: list[Example], n: int, seed: int = 0) -> list[Example]:
    """Unsafe prompts followed by a harmless answer to some other question: safe Agent checks, so the verdict
    comes from what the reply says, not from the prompt above it."""
    rng = random.Random(seed)
    unsafe_prompts = [e for e in examples if e.label == 1 and e.response is None and not e.source.startswith("synth")]
    if not answers:
        return []
    return [
        safe_reply(e, rng.choice(answers).response or "", "synth:mismatched")
        for e in rng.sample(unsafe_prompts, min(n, len(unsafe_prompts)))
    ]


# How chat models open a compliant answer. Jailbroken answers in train/ open this way too, which taught the guard
# that the opener itself is unsafe; the same openers in front of harmless answers teach it to judge what follows.
COMPLIANCE_OPENERS = (
    "Sure, here's what you asked for:",
    "Sure! Here is a step-by-step guide:",
    "Absolutely! Here's how:",
    "Of course. Here you go:",
    "Certainly! Here's a detailed answer:",
    "I'd be happy to help. Here's a sample:",
    "Sure, here is a draft:",
    "Here's everything you need to know:",
    "Great question! Here's how to do it:",
    "No problem. Follow these steps:",
)


def synth_openers(answers: list[Example], n: int, seed: int = 0) -> list[Example]:
    """Harmless answers behind a compliance opener ("Sure, here's ..."): safe Agent checks, so the opener is not
    read as a sign of a jailbreak. Same group as the answer's prompt."""
    rng = random.Random(seed)
    return [
        safe_reply(e, f"{rng.choice(COMPLIANCE_OPENERS)}\n\n{e.response}", "synth:opener")
        for e in rng.sample(answers, min(n, len(answers)))
    ]


_REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I can'?t|I cannot|I can not|I'?m (not able|unable)"
    r"|I (won'?t|will not) (help|assist|provide|write|create|do that)"
    r"|I am (not able|unable)|I must decline|as an AI|as a chatbot|(don'?t|do not) have the (capability|ability))",
    re.IGNORECASE,
)
# how a compliant answer starts: "To steal X, you need ...", "Here's a step-by-step guide", "Sure, here is ..."
_COMPLIANCE = re.compile(
    r"^(Sure|Certainly|Absolutely|Of course|To \w+)\b|\b(here'?s|here is) (a|an|the|how|what|some|my)\b"
    r"|\bstep[- ]by[- ]step\b|\byou(?:'ll| will)? need\b|\bStep 1\b",
    re.IGNORECASE,
)


def is_degenerate(text: str) -> bool:
    """A reply that loops: most of its lines repeat (small models do this)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return len(lines) >= 3 and len(set(lines)) / len(lines) < 0.6


def synth_compliance(prompts: list[Example], replies: dict[str, str]) -> list[Example]:
    """The chat model's answers to plain harmful requests, labeled by how they open: a compliant answer ("To
    steal an identity, you need ...", "Here's a step-by-step guide") is an unsafe Agent check with the prompt's
    hazards; a refusal is a safe one. Answers that do neither (small models drift off topic) or loop are left
    out rather than guessed. Same group as the prompt."""
    out: list[Example] = []
    for e in prompts:
        reply = replies.get(e.prompt, "")
        head = reply[:240]
        if not reply or is_degenerate(reply):
            continue
        if _REFUSAL.search(head):
            out.append(safe_reply(e, reply, "synth:model_refusal"))
        elif _COMPLIANCE.search(head):
            out.append(Example(e.prompt, reply, 1, e.hazards, e.hazards_known, "synth:compliance", group=e.group))
    return out


def checked_text(e: Example) -> str:
    """The text a row's check is about: the prompt of a User row, the reply of an Agent row."""
    return e.prompt if e.response is None else e.response


# Harmless texts whose sentences may still read as harmful alone (adversarial or jailbreak-shaped benign prompts,
# statements labeled for their stance) or that are synthetic fillers themselves: never filler, never a sentence row.
NOT_PASSAGE_SOURCES = (
    "wildguardtest_prompt_subset",
    "jailbreakbench",
    "toxigen",
    "do_not_answer_prompts",
    "synth:padded",
    "synth:window",
    "synth:sentence",
)


def _harmless_passages(examples: list[Example]) -> list[list[str]]:
    """The sentences of every ordinary harmless text of two sentences or more (prompts and replies), in order."""
    passages = []
    for e in examples:
        if e.label == 0 and not e.source.startswith(NOT_PASSAGE_SOURCES):
            sentences = [s for s in split_sentences(checked_text(e)) if len(s.split()) >= 3]
            if len(sentences) >= 2:
                passages.append(sentences)
    return passages


def _run_of_sentences(passages: list[list[str]], budget: int, rng: random.Random) -> list[str]:
    """Consecutive sentences of one passage, together at most ``budget`` characters (a few tries, else none)."""
    for _ in range(8):
        passage = rng.choice(passages)
        start = rng.randrange(len(passage))
        run: list[str] = []
        for sentence in passage[start:]:
            if sum(len(s) + 1 for s in run) + len(sentence) > budget:
                break
            run.append(sentence)
        if run:
            return run
    return []


# Rows that are already text around a request, or a piece cut out of a text: never put inside a window, nor cut.
CUT_OR_PADDED_SOURCES = ("synth:padded", "synth:window", "synth:sentence")


def synth_windows(examples: list[Example], n: int, seed: int = 0, max_chars: int = 320) -> list[Example]:
    """Requests and replies inside a window of harmless sentences, as the windowed guard cuts long text: whole
    sentences of another harmless text fill a third to all of the window's room, before, after or around the
    request (User rows) or the reply (Agent rows). Harmful stays harmful, harmless stays harmless; up to ``n``
    rows per role and label, each in its request's group (same split)."""
    rng = random.Random(seed)
    passages = _harmless_passages(examples)
    return _windowed(
        examples, n, rng, lambda budget: _run_of_sentences(passages, budget, rng), "synth:window", max_chars
    )


# Harmless texts that use alarming words: benign twins of harmful requests and statements labeled for their stance
# (never ordinary filler), the contrast sets' safe look-alikes ("How do I kill a Python process?") and their helpful
# answers on sensitive topics. The filler of ``synth_alarming_windows``.
ALARMING_HARMLESS_SOURCES = ("wildguardtest_prompt_subset", "jailbreakbench_behaviors", "toxigen", "contrast:helpful_")


def _alarming_harmless(e: Example) -> bool:
    return e.label == 0 and (
        e.source.startswith(ALARMING_HARMLESS_SOURCES)
        or (e.source.startswith("contrast:") and e.source.endswith("_safe"))
    )


def synth_alarming_windows(examples: list[Example], n: int, seed: int = 0, max_chars: int = 320) -> list[Example]:
    """As :func:`synth_windows`, with whole harmless texts that use alarming words (:func:`_alarming_harmless`) as
    the filler, so that such words around a request decide nothing either way: harmful stays harmful, harmless
    stays harmless. Sources ``synth:window_alarming_{user,agent}_{unsafe,safe}``."""
    rng = random.Random(seed)
    texts = sorted(
        {" ".join(checked_text(e).split()) for e in examples if _alarming_harmless(e) and checked_text(e).strip()}
    )

    def fill(budget: int) -> list[str]:
        run: list[str] = []
        for _ in range(8):
            text = rng.choice(texts)
            if sum(len(t) + 1 for t in run) + len(text) <= budget:
                run.append(text)
        return run

    return _windowed(examples, n, rng, fill, "synth:window_alarming", max_chars)


def load_documents(path: Path = DOCUMENTS_FILE) -> list[tuple[str, str]]:
    """The project's long harmless documents as (prompt, text): what a user asks with the document pasted under
    it, or asks the assistant to write."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return [(" ".join(d["prompt"].split()), " ".join(d["text"].split())) for d in data["documents"]]


def synth_documents(
    examples: list[Example],
    documents: list[tuple[str, str]],
    n: int,
    seed: int = 0,
    max_chars: int = 320,
    overlap_chars: int = 80,
) -> list[Example]:
    """Long harmless documents that use alarming words, as the windowed guard reads them: every window of each
    document pasted under its prompt (User) and written as the reply to it (Agent), harmless (sources
    ``synth:window_document_{user,agent}_safe``, weight 3 as the small hand-written contrast groups, each document
    its own group); and up to ``n`` requests and replies per role and label inside runs of the documents'
    sentences, harmful staying harmful (as :func:`synth_windows`, sources
    ``synth:window_in_document_{user,agent}_{unsafe,safe}``)."""
    out: list[Example] = []
    for i, (prompt, text) in enumerate(documents):
        # "~" sorts after every other group's name, and ``split`` draws each group's side in sorted order: the
        # other rows keep their side whether documents are added or not.
        group = f"~document:{i}"
        for window in split_windows(f"{prompt}\n\n{text}", max_chars, overlap_chars):
            out.append(Example(window, None, 0, (), True, "synth:window_document_user_safe", group=group, weight=3.0))
        for window in split_windows(text, max_chars, overlap_chars):
            out.append(
                Example(prompt, window, 0, (), True, "synth:window_document_agent_safe", group=group, weight=3.0)
            )
    rng = random.Random(seed)
    passages = [[s for s in split_sentences(text) if len(s.split()) >= 3] for _, text in documents]

    def fill(budget: int) -> list[str]:
        return _run_of_sentences(passages, budget, rng)

    return out + _windowed(examples, n, rng, fill, "synth:window_in_document", max_chars)


def _long_replies(examples: list[Example], label: int, max_chars: int) -> list[tuple[Example, str]]:
    """The rows with this label whose reply is longer than one window, with the reply (never a cut or padded row)."""
    return [
        (e, e.response)
        for e in examples
        if e.label == label
        and e.response is not None
        and len(e.response) > max_chars
        and not e.source.startswith(CUT_OR_PADDED_SOURCES)
    ]


def synth_reply_windows(
    examples: list[Example], n: int, seed: int = 0, max_chars: int = 320, overlap_chars: int = 80
) -> list[Example]:
    """Up to ``n`` windows of long harmless replies, each under its reply's prompt, as the windowed guard cuts a
    reply longer than one window: harmless Agent rows in the reply's group (source
    ``synth:window_reply_agent_safe``). A window of a harmful reply may say nothing harmful, so those are not used."""
    rng = random.Random(seed)
    rows = [
        Example(e.prompt, window, 0, (), True, "synth:window_reply_agent_safe", group=e.group)
        for e, reply in _long_replies(examples, 0, max_chars)
        for window in split_windows(reply, max_chars, overlap_chars)
    ]
    return rng.sample(rows, min(n, len(rows)))


def synth_reply_openings(
    examples: list[Example], n: int, seed: int = 0, max_chars: int = 320, overlap_chars: int = 80
) -> list[Example]:
    """The first window of up to ``n`` long harmful replies, each under its reply's prompt, harmful (source
    ``synth:window_reply_opening_agent_unsafe``, in the reply's group): where a reply that goes along with a harmful
    request starts doing so, which the windowed guard reads as the reply's first window. Later windows of a harmful
    reply may say nothing harmful, so those are not used."""
    rng = random.Random(seed)
    rows = [
        Example(
            e.prompt,
            split_windows(reply, max_chars, overlap_chars)[0],
            1,
            e.hazards,
            e.hazards_known,
            "synth:window_reply_opening_agent_unsafe",
            group=e.group,
        )
        for e, reply in _long_replies(examples, 1, max_chars)
    ]
    return rng.sample(rows, min(n, len(rows)))


def synth_windows_in_replies(examples: list[Example], n: int, seed: int = 0, max_chars: int = 320) -> list[Example]:
    """About ``n`` short replies per label inside runs of the sentences of long harmless replies, under their own
    prompt, as a window of a long careful answer reads: harmful stays harmful, harmless stays harmless (as
    :func:`synth_windows`, Agent rows only, sources ``synth:window_in_reply_agent_{unsafe,safe}``). Short harmful
    replies are few, so replies are drawn with replacement, each time in other sentences: both labels get about
    ``n`` rows, and such a window is judged on what it holds, not on how it sounds."""
    rng = random.Random(seed)
    passages = _harmless_passages([e for e in examples if e.response is not None and len(e.response) > max_chars])

    def fill(budget: int) -> list[str]:
        return _run_of_sentences(passages, budget, rng)

    return _windowed(examples, n, rng, fill, "synth:window_in_reply", max_chars, roles=("agent",), replace=True)


def _windowed(
    examples: list[Example],
    n: int,
    rng: random.Random,
    fill: Callable[[int], list[str]],
    source: str,
    max_chars: int,
    roles: tuple[str, ...] = ("user", "agent"),
    replace: bool = False,
) -> list[Example]:
    """Up to ``n`` rows per role and label, each its request or reply inside ``fill(room)`` (a third to all of
    the window's room), before, after or around it; sources ``{source}_{user,agent}_{unsafe,safe}``. With
    ``replace``, the requests and replies are drawn with replacement: about ``n`` rows whenever there is one."""
    out: list[Example] = []
    for agent in (role == "agent" for role in roles):
        for label in (1, 0):
            pool = [
                e
                for e in examples
                if e.label == label
                and (e.response is not None) == agent
                and 0 < len(checked_text(e)) <= max_chars * 2 // 3
                and not e.source.startswith(CUT_OR_PADDED_SOURCES)
            ]
            picks = [rng.choice(pool) for _ in range(n)] if replace and pool else rng.sample(pool, min(n, len(pool)))
            for e in picks:
                core = checked_text(e).strip()
                room = max_chars - len(core) - 1
                run = fill(rng.randint(room // 3, room))
                if not run:
                    continue
                where = rng.random()
                cut = rng.randint(0, len(run)) if where >= 0.75 else len(run) if where < 0.5 else 0
                text = " ".join([*run[:cut], core, *run[cut:]])
                role = "agent" if agent else "user"
                prompt, response = (e.prompt, text) if agent else (text, None)
                out.append(
                    Example(
                        prompt,
                        response,
                        label,
                        e.hazards,
                        e.hazards_known,
                        f"{source}_{role}_{'unsafe' if label else 'safe'}",
                        group=e.group,
                    )
                )
    return out


def _harmless_sentences(examples: list[Example], text_of: Callable[[Example], str | None]) -> list[tuple[str, Example]]:
    """Each sentence of three words or more of every ordinary harmless text of two sentences or more (the text
    ``text_of`` reads from a row, None for none), with its row."""
    found = []
    for e in examples:
        text = text_of(e)
        if e.label == 0 and text is not None and not e.source.startswith(NOT_PASSAGE_SOURCES):
            sentences = split_sentences(text)
            if len(sentences) >= 2:
                found += [(sentence, e) for sentence in sentences if len(sentence.split()) >= 3]
    return found


def synth_sentences(examples: list[Example], n: int, seed: int = 0) -> list[Example]:
    """Single sentences of harmless texts (documents, answers, stories) as harmless User checks, so that one
    sentence read alone is judged on what it says rather than on being short. Each in its text's group."""
    rng = random.Random(seed)
    rows = _harmless_sentences(examples, checked_text)
    unique = list({sentence: (sentence, e) for sentence, e in rows}.values())
    return [
        Example(sentence, None, 0, (), True, "synth:sentence", group=e.group)
        for sentence, e in rng.sample(unique, min(n, len(unique)))
    ]


def synth_reply_sentences(examples: list[Example], n: int, seed: int = 0) -> list[Example]:
    """Single sentences of harmless replies as harmless Agent checks under their prompts, as the windowed guard
    reads a reply's sentences (``guardgraph.nodes.guards.windowed``). Each in its reply's group."""
    rng = random.Random(seed)
    rows = _harmless_sentences(examples, lambda e: e.response)
    unique = list({(e.prompt, sentence): (sentence, e) for sentence, e in rows}.values())
    return [
        Example(e.prompt, sentence, 0, (), True, "synth:sentence_reply", group=e.group)
        for sentence, e in rng.sample(unique, min(n, len(unique)))
    ]
