"""The first chunk's output check starts from the lookahead; only a verdict for the exact released text counts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from guardgraph.nodes.checks.run import GuardSettings
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.streaming.generation import BackgroundGeneration
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.nodes.streaming.precheck import Lookahead, Precheck, guessed_chunk
from tests.fakes import SlowGuard, keyword_answer, scripted_llama_guard
from tests.test_streaming import stream_turn
from tests.tiny_models import tiny_chat_model

REPLY_TOKENS = ["To", " make", " a", " cake", ",", " mix", " it", "."]
WAIT_S = 10.0  # a bound against hanging, not a timing assertion


def verdict(outcome: Outcome) -> Verdict:
    return Verdict(role="Agent", outcome=outcome)


class RecordingCheck:
    """A check that is unsafe for texts containing a bad word, recording (text, thread name) per call."""

    def __init__(self, *bad: str) -> None:
        self.bad = bad
        self.calls: list[tuple[str, str]] = []
        self.called = threading.Event()

    def __call__(self, text: str) -> Verdict:
        self.calls.append((text, threading.current_thread().name))
        self.called.set()
        return verdict(Outcome.UNSAFE if any(b in text for b in self.bad) else Outcome.SAFE)

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.calls]


def after_check(check: RecordingCheck, *items: str | Lookahead) -> Iterator[str | Lookahead]:
    """Yields a lookahead, then the rest only once the check has run (as when decoding takes longer)."""
    yield items[0]
    assert check.called.wait(WAIT_S)
    yield from items[1:]


def test_guess_is_the_unfinished_word_plus_a_space() -> None:
    assert guessed_chunk("", Lookahead("To")) == "To "
    assert guessed_chunk("Sure. ", Lookahead("Here")) == "Sure. Here "
    assert guessed_chunk("", Lookahead("")) is None
    assert guessed_chunk("", Lookahead("To\n")) is None
    assert guessed_chunk("", Lookahead("caf\ufffd")) is None


def test_first_chunk_is_checked_before_it_is_complete_and_not_again() -> None:
    check = RecordingCheck()
    shown: list[str] = []
    result = release_guarded(after_check(check, Lookahead("To"), "To ", "make ", "it."), check, shown.append)
    assert shown[0] == "To " and "".join(shown) == "To make it." and not result.blocked
    assert check.calls[0][1].startswith("guardgraph-precheck")  # checked ahead, off the stream's thread
    assert check.texts.count("To ") == 1  # the guessed verdict was used, not a second check


def test_unsafe_guess_for_the_exact_text_blocks_it() -> None:
    check = RecordingCheck("Bad")
    shown: list[str] = []
    result = release_guarded(after_check(check, Lookahead("Bad"), "Bad ", "idea."), check, shown.append)
    assert result.blocked and shown == [] and result.released == ""


def test_wrong_guess_is_never_used_for_the_real_chunk() -> None:
    check = RecordingCheck(",")  # the guess "Sure " passes, the real chunk "Sure, " does not
    shown: list[str] = []
    result = release_guarded(after_check(check, Lookahead("Sure"), "Sure, ", "fine."), check, shown.append)
    assert result.blocked and shown == []
    assert check.texts == ["Sure ", "Sure, "]


def test_failed_wrong_guess_does_not_block_the_real_chunk() -> None:
    check = RecordingCheck("Sure ")
    shown: list[str] = []
    result = release_guarded(after_check(check, Lookahead("Sure"), "Sure, ", "fine."), check, shown.append)
    assert not result.blocked and "".join(shown) == "Sure, fine."


def test_lookahead_only_serves_the_first_chunk() -> None:
    check = RecordingCheck()
    shown: list[str] = []
    pieces = after_check(check, Lookahead("A"), "A ", Lookahead("b"), "b. ", "c.")
    release_guarded(pieces, check, shown.append, Chunking(1, 1, 8))
    assert check.texts == ["A ", "A b. ", "A b. c."]


def test_first_chunk_of_several_pieces_is_guessed_only_before_its_last_piece() -> None:
    check = RecordingCheck()
    shown: list[str] = []
    pieces = [Lookahead("A"), "A ", Lookahead("b"), "b ", "c."]
    release_guarded(pieces, check, shown.append, Chunking(2, 1, 8))
    assert "A " not in check.texts  # one piece is not the first chunk: no guess for it
    assert shown[0] == "A b "


def test_newest_guess_replaces_a_waiting_one() -> None:
    release = threading.Event()
    seen: list[str] = []

    def check(text: str) -> Verdict:
        seen.append(text)
        if text == "a":
            assert release.wait(WAIT_S)
        return verdict(Outcome.SAFE)

    precheck = Precheck(check)
    try:
        precheck.guess("a")  # running, blocked
        precheck.guess("b")  # waits behind it...
        precheck.guess("c")  # ...and is dropped for the newer guess
        release.set()
        assert precheck.verdict("c") is not None
        assert precheck.verdict("b") is None and precheck.verdict("never guessed") is None
        assert seen == ["a", "c"]
    finally:
        precheck.close()


# ----------------------------------------------------------------------------- a local transformers model


@pytest.fixture(scope="module")
def tiny_chat() -> Any:
    return tiny_chat_model(REPLY_TOKENS)


def local_pieces(model: Any) -> tuple[list[str], list[str | Lookahead]]:
    """(the model's own stream, what BackgroundGeneration yields) for the same request."""
    messages = [HumanMessage("How do I make a cake?")]
    own = [str(chunk.content) for chunk in model.stream(messages) if chunk.content]
    return own, list(BackgroundGeneration(model, messages).pieces())


def test_local_generation_releases_what_the_models_own_stream_releases(tiny_chat: Any) -> None:
    own, items = local_pieces(tiny_chat)
    pieces = [item for item in items if isinstance(item, str)]
    # The same pieces as ChatHuggingFace.stream, whichever rule this transformers version's streamer
    # uses to cut words ("To " + "make " before 5.24, "To" + " make" since).
    assert pieces == own and "".join(pieces) == "To make a cake, mix it."
    first = next(i for i, item in enumerate(items) if isinstance(item, str))
    assert all(isinstance(item, Lookahead) for item in items[:first])  # lookaheads only before the first piece
    assert not any(isinstance(item, Lookahead) for item in items[first:])


HELD_BACK_REPLY = ["**", "Cake", ":", " is", " easy", "."]


def test_a_held_back_first_word_is_guessed_exactly() -> None:
    # Markup is held back by every streamer rule until a space follows: the first piece is known one
    # decoding step before it is released, and the guess for it is exactly that piece.
    own, items = local_pieces(tiny_chat_model(HELD_BACK_REPLY))
    pieces = [item for item in items if isinstance(item, str)]
    assert pieces == own and pieces[0] == "**Cake: " and "".join(pieces) == "**Cake: is easy."
    lookaheads = [item for item in items[: items.index(pieces[0])] if isinstance(item, Lookahead)]
    assert guessed_chunk("", lookaheads[-1]) == pieces[0]


def test_graph_uses_the_precheck_verdict_for_a_held_back_first_chunk(make_guarded_graph: Callable[..., Any]) -> None:
    first_chunk_threads: list[str] = []

    def answer(prompt: str) -> str:
        if "Agent: **Cake:\n\n<END CONVERSATION>" in prompt:
            first_chunk_threads.append(threading.current_thread().name)
        return "safe"

    no_timeout = GuardSettings(timeout_s=None)  # the check runs on the thread that asked for it
    graph = make_guarded_graph(
        tiny_chat_model(HELD_BACK_REPLY), output_guard=scripted_llama_guard(answer), output_settings=no_timeout
    )
    released, final = stream_turn(graph, "A cake?")
    assert released[0] == "**Cake: " and "".join(released) == final["messages"][-1].content
    # checked once, ahead of time on the precheck's thread, and that verdict released it
    assert len(first_chunk_threads) == 1 and first_chunk_threads[0].startswith("guardgraph-precheck")


def test_graph_releases_the_local_models_reply_checked_chunk_by_chunk(
    tiny_chat: Any, make_guarded_graph: Callable[..., Any]
) -> None:
    guard = scripted_llama_guard()
    released, final = stream_turn(make_guarded_graph(tiny_chat, output_guard=guard), "How do I make a cake?")
    assert "".join(released) == "To make a cake, mix it." == final["messages"][-1].content
    checked = [p for p in guard.backend.prompts if "'Agent' messages" in p]  # type: ignore[attr-defined]
    shown = ""
    for chunk in released:
        shown += chunk
        assert any(f"Agent: {shown.strip()}" in prompt for prompt in checked)


def test_graph_blocks_an_unsafe_first_chunk_found_by_the_precheck(
    tiny_chat: Any, make_guarded_graph: Callable[..., Any]
) -> None:
    guard = scripted_llama_guard(keyword_answer("to", codes="S9"))
    released, final = stream_turn(make_guarded_graph(tiny_chat, output_guard=guard), "How do I make a cake?")
    assert released == [] and final["refused"] is True


def test_unsafe_input_starts_no_output_check(tiny_chat: Any, make_guarded_graph: Callable[..., Any]) -> None:
    log: list[Any] = []
    input_guard = SlowGuard(scripted_llama_guard("unsafe\nS9"), 0.05, log)
    output_guard = scripted_llama_guard()
    released, final = stream_turn(make_guarded_graph(tiny_chat, input_guard, output_guard), "pipe bomb howto")
    assert released == [] and final["refused"] is True
    assert output_guard.backend.prompts == []  # type: ignore[attr-defined]
