"""Keep message text from impersonating the guard prompt's structure.

The guard prompt is a template: ``[INST]``/``[/INST]`` or Llama 3/4 header tokens around a task line,
``<BEGIN UNSAFE CONTENT CATEGORIES>``...``<END UNSAFE CONTENT CATEGORIES>``, and a conversation between
``<BEGIN CONVERSATION>`` and ``<END CONVERSATION>`` whose turns are lines starting ``User:`` or
``Agent:``. Message text that contains any of these could end the conversation early, add a fake turn
or, once a remote server parses special tokens in the prompt string, close the user header itself.

The scheme, applied by :func:`neutralize` to every message text the renderer writes:

* **Matching** runs on a *skeleton* of the text: each character is NFKD-normalized, zero-width and
  other invisible format characters (Unicode Cf, combining marks, variation selectors, tag characters)
  are dropped, a small table maps Cyrillic/Greek/symbol look-alikes to ASCII (``Аgent`` with a
  Cyrillic A, ``＜``, ``‹``, ``〈``, ``∶``...), and the result is case-folded. Whitespace (any Unicode
  space, including none at all between words) is allowed wherever the template has a space.
* **Rewriting** swaps only the structural bracket for a parenthesis, in the original text, so the
  guard still reads the words:

  ========================================  ========================================
  text                                      becomes
  ========================================  ========================================
  ``<BEGIN CONVERSATION>`` (and END, and     ``(BEGIN CONVERSATION)``
  the categories delimiters, any variant)
  ``[INST]`` / ``[/INST]``                   ``(INST)`` / ``(/INST)``
  ``<|eot_id|>`` and any ``<|...|>``         ``(|eot_id|)``
  ``<s>``, ``</s>``, ``<unk>``, ``<<SYS>>``  ``(s)``, ``(/s)``, ``(unk)``, ``(<SYS>)``
  a line starting ``User:`` / ``Agent:``     ``(User):`` / ``(Agent):``
  ========================================  ========================================

  A delimiter with no closing bracket only has its opening bracket swapped. Any format-specific token
  listed in ``GuardFormat.special_tokens`` that the generic rules do not cover gets the same treatment
  (or, when it has no bracket, a space after its first character).

* The result is **idempotent** (no neutral form matches any rule) and **text without structure is
  returned unchanged**, byte for byte (the same string object).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from guardgraph.nodes.guards.llama_guard.formats import GuardFormat

# Look-alikes NFKD leaves alone, mapped before case folding (upper case) and after it (lower case).
_UPPER_CONFUSABLES = str.maketrans(
    {
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
        "Т": "T", "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "Ԍ": "G", "Ԛ": "Q", "Ԝ": "W",
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
        "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ɡ": "G",
    }
)  # fmt: skip
_LOWER_CONFUSABLES = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j",
        "ѕ": "s", "ԁ": "d", "ɡ": "g", "ս": "u", "ո": "n", "ο": "o", "α": "a", "ι": "i", "υ": "u",
        "ν": "v", "τ": "t", "κ": "k", "ɑ": "a", "ı": "i", "ǀ": "|", "│": "|", "┃": "|", "∣": "|",
        "❘": "|", "¦": "|", "‹": "<", "›": ">", "〈": "<", "〉": ">", "⟨": "<", "⟩": ">", "❮": "<",
        "❯": ">", "❬": "<", "❭": ">", "˂": "<", "˃": ">", "ᐸ": "<", "ᐳ": ">", "≺": "<", "≻": ">",
        "《": "<", "》": ">", "⟦": "[", "⟧": "]", "〔": "[", "〕": "]", "【": "[", "】": "]",
        "〚": "[", "〛": "]", "∶": ":", "꞉": ":", "˸": ":", "։": ":", "׃": ":", "܃": ":", "⁄": "/",
        "∕": "/", "⧸": "/",
    }
)  # fmt: skip
# Invisible characters that are not Unicode format (Cf) or combining marks but render as nothing.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5")
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_SEP = r"[\s_\-.·]*"  # between the words of a delimiter: any whitespace, or none, or _ - .

_DELIMITER = re.compile(
    rf"(?P<open><)\s*(?:begin|end){_SEP}(?:unsafe{_SEP}content{_SEP}categories|conversation)\s*(?P<close>>)?"
)
_INST = re.compile(r"(?P<open>\[)\s*/?\s*inst(?![a-z0-9])\s*(?P<close>\])?")
_PIPE_TOKEN = re.compile(r"(?P<open><)\s*\|[^<>|\n]{0,64}\|\s*(?P<close>>)")
# Half tokens (``|eot_id|>`` after an opener was already neutralized, or ``<|eot_id|`` with no closer).
_PIPE_CLOSE = re.compile(r"\|[^<>|\n]{1,64}\|\s*(?P<close>>)")
_PIPE_OPEN = re.compile(r"(?P<open><)\s*\|[^<>|\n]{1,64}\|")
_ANGLE_TOKEN = re.compile(r"(?P<open><)\s*/?\s*(?:s|unk|pad|bos|eos)\s*(?P<close>>)")
_SYS_TOKEN = re.compile(r"(?P<open><)<\s*/?\s*sys\s*>(?P<close>>)")
_SPEAKER = re.compile(rf"(?:^|(?<=[{_LINE_BREAKS}]))[^\S{_LINE_BREAKS}]*(?P<word>user|agent)\s*:")
_GENERIC_RULES = (_DELIMITER, _INST, _PIPE_TOKEN, _PIPE_CLOSE, _PIPE_OPEN, _ANGLE_TOKEN, _SYS_TOKEN)

_NEUTRAL = {"<": "(", ">": ")", "[": "(", "]": ")"}
_QUICK_CHECK = re.compile(r"[<\[:]")


@functools.lru_cache(maxsize=4096)
def _skeleton_char(char: str) -> str:
    """What one character contributes to the skeleton (possibly nothing, possibly several chars)."""
    if char in _INVISIBLE:
        return ""
    out: list[str] = []
    for part in unicodedata.normalize("NFKD", char):
        category = unicodedata.category(part)
        if category in ("Cf", "Mn", "Me") or part in _INVISIBLE:
            continue
        out.append(part.translate(_UPPER_CONFUSABLES).casefold().translate(_LOWER_CONFUSABLES))
    return "".join(out)


def skeleton_map(text: str) -> tuple[str, list[int]]:
    """The matching skeleton of ``text`` and, for each skeleton character, its index in ``text``."""
    if text.isascii():
        return text.lower(), list(range(len(text)))
    chars: list[str] = []
    index: list[int] = []
    for position, char in enumerate(text):
        mapped = _skeleton_char(char)
        chars.append(mapped)
        index.extend([position] * len(mapped))
    return "".join(chars), index


def skeleton(text: str) -> str:
    """The normalized form structure is matched on (NFKD, no invisibles, look-alikes mapped, folded)."""
    return skeleton_map(text)[0]


@functools.lru_cache(maxsize=32)
def _format_rules(tokens: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """Rules for a format's declared special tokens that the generic rules do not already catch."""
    rules: list[re.Pattern[str]] = []
    for token in tokens:
        if any(rule.search(skeleton(token)) for rule in _GENERIC_RULES):
            continue
        body = skeleton(token)
        if not body:
            continue
        first, last = re.escape(body[0]), re.escape(body[-1])
        middle = re.escape(body[1:-1]) if len(body) > 2 else ""
        if len(body) == 1:
            rules.append(re.compile(f"(?P<open>{first})"))
        else:
            rules.append(re.compile(f"(?P<open>{first}){middle}(?P<close>{last})"))
    return tuple(rules)


def _rules_for(fmt: GuardFormat | None) -> Iterable[re.Pattern[str]]:
    yield from _GENERIC_RULES
    if fmt is not None:
        yield from _format_rules(tuple(fmt.special_tokens))


def neutralize(text: str, fmt: GuardFormat | None = None) -> str:
    """Return ``text`` with nothing in it that the template treats as structure (see module doc)."""
    if not text or not _has_candidate(text):
        return text
    skel, index = skeleton_map(text)
    replace: dict[int, str] = {}
    before: dict[int, str] = {}
    after: dict[int, str] = {}
    for rule in _rules_for(fmt):
        for match in rule.finditer(skel):
            for group in ("open", "close"):
                if group in rule.groupindex and match.start(group) >= 0:
                    position = index[match.start(group)]
                    found = skel[match.start(group)]
                    replace[position] = _NEUTRAL.get(found, text[position] + " ")
    for match in _SPEAKER.finditer(skel):
        start, end = index[match.start("word")], index[match.end("word") - 1]
        before[start] = "("
        after[end] = ")"
    if not (replace or before or after):
        return text
    out: list[str] = []
    for position, char in enumerate(text):
        out.append(before.get(position, ""))
        out.append(replace.get(position, char))
        out.append(after.get(position, ""))
    return "".join(out)


def _has_candidate(text: str) -> bool:
    """A cheap pre-check: plain ASCII text without ``<``, ``[`` or ``:`` can hold no structure."""
    return not text.isascii() or _QUICK_CHECK.search(text) is not None
