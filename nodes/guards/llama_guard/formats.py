"""The five Llama Guard prompt formats, as data (see docs/llama-guard-formats.md).

Formats differ only in wrapper tokens, task-line wording, spacing and bullet style; ``render.py``
reads these records and is the only code that builds a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

TASK_LINE_V1 = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
    "policy with the below categories."
)
TASK_LINE_V4 = TASK_LINE_V1.replace("according our", "according to our")
INSTRUCTION_V1 = (
    "Provide your safety assessment for {role} in the above conversation:\n"
    "- First line must read 'safe' or 'unsafe'.\n"
    "- If unsafe, a second line must include a comma-separated list of violated categories."
)
INSTRUCTION_V2 = (
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
LLAMA3_USER_HEADER = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>"
LLAMA4_USER_HEADER = "<|begin_of_text|><|header_start|>user<|header_end|>\n\n"
LLAMA4_ASSISTANT_HEADER = "<|header_start|>assistant<|header_end|>"


@dataclass(frozen=True)
class GuardFormat:
    """Everything that distinguishes one Llama Guard version's prompt from another's."""

    name: str
    prefix: str
    task_line: str
    category_line_end: str
    conversation_open: str
    turn_end: str
    instruction: str
    suffix: str
    default_policy: str
    # What the model writes before the verdict word (the verdict position is after it).
    verdict_lead: str
    # Strings that are structure in this format and must never come from message text.
    special_tokens: tuple[str, ...]


LLAMA_GUARD_1 = GuardFormat(
    name="llama-guard-1",
    prefix="[INST] ",
    task_line=TASK_LINE_V1,
    category_line_end="",
    conversation_open="<BEGIN CONVERSATION>\n\n",
    turn_end="",
    instruction=INSTRUCTION_V1,
    suffix=" [/INST]",
    default_policy="llama-guard-1",
    verdict_lead="",
    special_tokens=("<s>", "</s>", "<unk>"),
)
# Each later version is written as what it changes from the one before.
LLAMA_GUARD_2 = replace(
    LLAMA_GUARD_1,
    name="llama-guard-2",
    category_line_end=" ",
    instruction=INSTRUCTION_V2,
    default_policy="llama-guard-2",
    special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
)
LLAMA_GUARD_3 = replace(
    LLAMA_GUARD_2,
    name="llama-guard-3",
    prefix=LLAMA3_USER_HEADER,
    category_line_end="",
    suffix="<|eot_id|>" + LLAMA3_ASSISTANT_HEADER,
    default_policy="llama-guard-3",
    verdict_lead="\n\n",
    special_tokens=(),
)
LLAMA_GUARD_3_1B = replace(
    LLAMA_GUARD_3,
    name="llama-guard-3-1b",
    suffix=" <|eot_id|>" + LLAMA3_ASSISTANT_HEADER,
    default_policy="llama-guard-3-1b",
)
LLAMA_GUARD_4 = replace(
    LLAMA_GUARD_3,
    name="llama-guard-4",
    prefix=LLAMA4_USER_HEADER,
    task_line=TASK_LINE_V4,
    conversation_open="<BEGIN CONVERSATION>\n",
    turn_end="\\n\\n",
    suffix=" <|eot|>" + LLAMA4_ASSISTANT_HEADER,
    default_policy="llama-guard-4",
)
FORMATS: dict[str, GuardFormat] = {
    fmt.name: fmt for fmt in (LLAMA_GUARD_1, LLAMA_GUARD_2, LLAMA_GUARD_3, LLAMA_GUARD_3_1B, LLAMA_GUARD_4)
}


class UnknownFormatError(ValueError):
    """A guard format name that guardgraph does not know."""


def get_format(name: str) -> GuardFormat:
    """The format called ``name``; the error lists the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(f"unknown guard format {name!r}: use one of {', '.join(FORMATS)}") from None
