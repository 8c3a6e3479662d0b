"""The one renderer: a GuardRequest and a GuardFormat in, the exact guard prompt out."""

from __future__ import annotations

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.sanitize import neutralize
from guardgraph.policies.model import Category

SPEAKER_LABEL = {"user": "User", "assistant": "Agent"}


def render_category(category: Category, fmt: GuardFormat, descriptions: bool, few_shot: bool = False) -> str:
    """``CODE: Name.`` and, when asked for and present, the description on the following lines; with
    ``few_shot`` (a policy switch) the category's examples and counter-examples follow, one quoted line each."""
    line = f"{category.code}: {category.name}.{fmt.category_line_end}\n"
    if descriptions and category.description:
        line += category.description.strip("\n") + "\n"
    if descriptions and few_shot:
        shown = (
            (f"Examples of {category.code}", category.examples),
            (f"Not {category.code}", category.counter_examples),
        )
        for heading, texts in shown:
            if texts:
                line += f"{heading}:\n" + "".join(f'- "{_one_line(text, fmt)}"\n' for text in texts)
    return line


def _one_line(text: str, fmt: GuardFormat) -> str:
    """An example as one line of the prompt: whitespace runs joined, structure neutralized."""
    return neutralize(" ".join(text.split()), fmt)


def render_turn(turn: Turn, fmt: GuardFormat) -> str:
    return f"{SPEAKER_LABEL[turn.speaker]}: {neutralize(turn.text, fmt).strip()}{fmt.turn_end}"


def render_parts(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> tuple[str, str]:
    """The prompt split into (policy prefix, conversation suffix).

    The prefix depends only on (format, policy, role), so a model can cache its keys and values.
    """
    policy = request.policy
    categories = "".join(render_category(c, fmt, descriptions, policy.few_shot) for c in policy.active_categories)
    prefix = (
        fmt.prefix
        + fmt.task_line.format(role=request.role)
        + "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + categories
        + "<END UNSAFE CONTENT CATEGORIES>\n\n"
        + fmt.conversation_open
    )
    conversation = "\n\n".join(render_turn(turn, fmt) for turn in request.turns)
    suffix = conversation + "\n\n<END CONVERSATION>\n\n" + fmt.instruction.format(role=request.role) + fmt.suffix
    return prefix, suffix


def render_prompt(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> str:
    """The exact text the guard model receives for ``request`` in ``fmt``."""
    prefix, suffix = render_parts(request, fmt, descriptions)
    return prefix + suffix
