"""What a policy is: an ordered list of categories the guards check against."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CODE_PATTERN = re.compile(r"^[A-Z][0-9]+$")


class Category(BaseModel):
    """One unsafe-content category, as the guard prompt lists it.

    ``examples`` are messages that belong to the category and ``counter_examples`` are look-alikes that do
    not; a classifier learnt from both enforces an example-defined category next to whatever guard runs.
    ``covers`` names the standard hazards (Llama Guard 3 codes, S1..S14) the category includes, so a guard
    trained on the standard taxonomy (the offline guard) can serve a custom policy. ``threshold`` (else the
    policy's) is the probability from which the category is flagged: the example classifier's own for an
    example-defined category; for a guard that scores only the whole message (Llama Guard, the offline
    guard), its P(unsafe), when that guard names the category.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    name: str
    description: str | None = None
    refusal: str | None = None
    examples: tuple[str, ...] = ()
    counter_examples: tuple[str, ...] = ()
    covers: tuple[str, ...] = ()
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)

    @field_validator("code")
    @classmethod
    def _code_shape(cls, value: str) -> str:
        if not CODE_PATTERN.match(value):
            raise ValueError(f"must look like S1 or O7 (a capital letter and a number), got {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("covers")
    @classmethod
    def _covers_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not CODE_PATTERN.match(code):
                raise ValueError(f"must list hazard codes like S1, got {code!r}")
        return value


class Policy(BaseModel):
    """A named set of categories; ``exclude`` drops codes without renumbering the others."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str | None = None
    guard_format: str | None = None
    categories: tuple[Category, ...]
    exclude: tuple[str, ...] = ()
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Write each category's examples and counter-examples into the LLM guard's prompt, after its description.
    few_shot: bool = False
    default_refusal: str = "I can't help with that request."
    # What the user is told when a guard could not decide (an error, an unreadable verdict): it blocks.
    undecided_refusal: str = "I can't answer that right now: the safety check could not be completed."
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _codes_unique_and_known(self) -> Policy:
        codes = [category.code for category in self.categories]
        if not codes:
            raise ValueError("categories: a policy needs at least one category")
        duplicates = sorted({code for code in codes if codes.count(code) > 1})
        if duplicates:
            raise ValueError(f"categories: duplicate codes {duplicates}")
        unknown = sorted(set(self.exclude) - set(codes))
        if unknown:
            raise ValueError(f"exclude: codes {unknown} are not categories of this policy")
        if not self.active_categories:
            raise ValueError("exclude: every category is excluded")
        return self

    @property
    def active_categories(self) -> tuple[Category, ...]:
        """The categories the guard is asked about, in policy order."""
        return tuple(c for c in self.categories if c.code not in self.exclude)

    def category(self, code: str) -> Category | None:
        """The active category with this code, or None."""
        for category in self.active_categories:
            if category.code == code:
                return category
        return None

    def threshold_for(self, code: str | None = None) -> float:
        """The unsafe threshold for one category, falling back to the policy's."""
        category = self.category(code) if code else None
        if category is not None and category.threshold is not None:
            return category.threshold
        return self.threshold

    def excluding(self, *codes: str) -> Policy:
        """A copy of this policy that also excludes ``codes``."""
        return self.model_copy(update={"exclude": tuple(dict.fromkeys((*self.exclude, *codes)))})
