"""The one renderer: a GuardRequest and a GuardFormat in, the exact guard prompt out."""

from __future__ import annotations

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.verdict import Role
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


def speaker_label(turn: Turn) -> str:
    """What a turn's line starts with: ``User:`` or ``Agent:``."""
    return f"{SPEAKER_LABEL[turn.speaker]}:"


def render_turn(turn: Turn, fmt: GuardFormat) -> str:
    return f"{speaker_label(turn)} {neutralize(turn.text, fmt).strip()}{fmt.turn_end}"


def render_closing(role: Role, fmt: GuardFormat) -> str:
    """What follows the conversation: the same for every check of ``role`` in ``fmt``."""
    return "\n\n<END CONVERSATION>\n\n" + fmt.instruction.format(role=role) + fmt.suffix


def render_parts(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> tuple[str, str]:
    """The prompt split into (policy prefix, conversation suffix).

    The prefix depends only on (format, policy, role), so a model can cache its keys and values.
    """
    conversation = "\n\n".join(render_turn(turn, fmt) for turn in request.turns)
    return render_prefix(request, fmt, descriptions), conversation + render_closing(request.role, fmt)


def render_prefix(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> str:
    """The policy block: task line and categories, up to where the conversation begins."""
    policy = request.policy
    categories = "".join(render_category(c, fmt, descriptions, policy.few_shot) for c in policy.active_categories)
    return (
        fmt.prefix
        + fmt.task_line.format(role=request.role)
        + "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + categories
        + "<END UNSAFE CONTENT CATEGORIES>\n\n"
        + fmt.conversation_open
    )


def last_text_end(suffix: str, role: Role, fmt: GuardFormat) -> int:
    """Where the last turn's text ends in a rendered ``suffix``.

    A prompt for the same conversation whose last message continues this one (the next chunk check of a
    streamed reply) starts with everything before it, byte for byte, unless the continuation turns text
    before it into prompt structure that :func:`neutralize` rewrites.
    """
    return len(suffix) - len(render_closing(role, fmt)) - len(fmt.turn_end)


def render_reply_lead(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> tuple[str, str]:
    """(policy prefix, conversation up to where the last turn's text begins): what every prompt for the
    same conversation with any last message starts with, e.g. every chunk check of a reply."""
    earlier = "".join(render_turn(turn, fmt) + "\n\n" for turn in request.turns[:-1])
    return render_prefix(request, fmt, descriptions), earlier + speaker_label(request.turns[-1])


def render_prompt(request: GuardRequest, fmt: GuardFormat, descriptions: bool = True) -> str:
    """The exact text the guard model receives for ``request`` in ``fmt``."""
    prefix, suffix = render_parts(request, fmt, descriptions)
    return prefix + suffix
