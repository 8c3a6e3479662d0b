"""A drop-in guarded chat model: any LangChain chat model, checked by a guard on the way in and out.

An existing chain gets guards by changing one line::

    llm = ChatOpenAI(model="gpt-4o-mini")                                         # before
    llm = GuardedChatModel(model=ChatOpenAI(model="gpt-4o-mini"), guard=guard, policy=policy)  # after
    chain = prompt | llm | StrOutputParser()

Each call checks the conversation's last user message (role ``User``), calls the wrapped model, then
checks its reply (role ``Agent``) and returns either the reply or the policy's refusal. The request
building, fail-closed error handling, fail-open/shadow modes and refusal wording are the graph's own, so
the model and the graph always agree. Every returned message carries ``response_metadata["guardgraph"]``:
``{"refused": bool, "role": "User"|"Agent"|None, "verdicts": [verdict dicts]}``.

Streaming holds the reply back until the output check has passed: ``stream()`` yields the checked
reply (or the refusal) as one chunk. The wrapped model is called without the caller's callbacks: its
unchecked tokens would otherwise reach streaming callback handlers (LangGraph's
``stream_mode="messages"``, ``astream_events``) before the guard has seen them. The guarded model's
own run is traced and streamed as usual.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from pydantic import ConfigDict, Field

from guardgraph.nodes.checks.run import GuardSettings, check
from guardgraph.nodes.checks.verdict import Role, Verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.refuse import refusal_text
from guardgraph.policies.model import Policy


class GuardedChatModel(BaseChatModel):
    """``model`` behind an input guard and an output guard (``output_guard``, else ``guard``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # A chat model, or one with tools bound (``GuardedChatModel.bind_tools`` binds them on the inner model).
    model: Runnable[Any, BaseMessage]
    guard: Guard
    policy: Policy
    output_guard: Guard | None = None
    # GuardSettings (a plain dataclass: typed Any so pydantic leaves it, and its audit log, alone)
    input_settings: Any = Field(default_factory=GuardSettings)
    output_settings: Any = Field(default_factory=GuardSettings)
    check_output: bool = True

    @property
    def _inner_model(self) -> Any:
        return self.model.bound if isinstance(self.model, RunnableBinding) else self.model

    @property
    def _llm_type(self) -> str:
        return f"guarded-{getattr(self._inner_model, '_llm_type', type(self._inner_model).__name__)}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": getattr(self._inner_model, "_identifying_params", {}),
            "guard": getattr(self.guard, "name", type(self.guard).__name__),
            "policy": self.policy.name,
        }

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> GuardedChatModel:
        """The same guards around ``model.bind_tools(tools)``: agents keep working after the one-line swap.

        The output guard reads a reply's text and its tool calls, one ``[tool call] name({json arguments})``
        line each, as the graph's output guard does.
        """
        if not isinstance(self.model, BaseChatModel):
            raise TypeError("bind_tools needs the wrapped model itself, not one that already has tools bound")
        return self.model_copy(update={"model": self.model.bind_tools(tools, **kwargs)})

    # ------------------------------------------------------------------ the checks

    def _check(self, role: Role, messages: Sequence[BaseMessage], reply: BaseMessage | None = None) -> Verdict:
        """Check the last user message (``User``) or ``reply`` to ``messages`` (``Agent``), as the graph does."""
        guard = self.guard if role == "User" else (self.output_guard or self.guard)
        settings = self.input_settings if role == "User" else self.output_settings
        return check(guard, role, messages, self.policy, settings, reply=reply)

    async def _acheck(self, role: Role, messages: Sequence[BaseMessage], reply: BaseMessage | None = None) -> Verdict:
        return await asyncio.to_thread(self._check, role, messages, reply)

    @staticmethod
    def _inner_config() -> RunnableConfig:
        # An explicit empty list: nothing is inherited from the caller's context (callbacks=None would be).
        return {"callbacks": []}

    # ------------------------------------------------------------------ results

    def _refusal(self, verdict: Verdict, verdicts: list[Verdict]) -> ChatResult:
        message = AIMessage(
            refusal_text(verdict, self.policy), response_metadata=_metadata(True, verdict.role, verdicts)
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _passed(self, reply: BaseMessage, verdicts: list[Verdict]) -> ChatResult:
        metadata = {**getattr(reply, "response_metadata", {}), **_metadata(False, None, verdicts)}
        if isinstance(reply, AIMessage):
            message = reply.model_copy(update={"response_metadata": metadata})
        else:
            message = AIMessage(content=reply.content, response_metadata=metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ------------------------------------------------------------------ BaseChatModel

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        verdicts = [self._check("User", messages)]
        if verdicts[-1].blocks:
            return self._refusal(verdicts[-1], verdicts)
        reply = self.model.invoke(messages, self._inner_config(), stop=stop, **kwargs)
        if self.check_output:
            verdicts.append(self._check("Agent", messages, reply))
            if verdicts[-1].blocks:
                return self._refusal(verdicts[-1], verdicts)
        return self._passed(reply, verdicts)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        verdicts = [await self._acheck("User", messages)]
        if verdicts[-1].blocks:
            return self._refusal(verdicts[-1], verdicts)
        reply = await self.model.ainvoke(messages, self._inner_config(), stop=stop, **kwargs)
        if self.check_output:
            verdicts.append(await self._acheck("Agent", messages, reply))
            if verdicts[-1].blocks:
                return self._refusal(verdicts[-1], verdicts)
        return self._passed(reply, verdicts)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # Nothing is shown before the output check: generate, check, then release the result at once.
        yield _as_chunk(self._generate(messages, stop, run_manager, **kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        yield _as_chunk(await self._agenerate(messages, stop, run_manager, **kwargs))


def _metadata(refused: bool, role: Role | None, verdicts: list[Verdict]) -> dict[str, Any]:
    return {"guardgraph": {"refused": refused, "role": role, "verdicts": [v.to_dict() for v in verdicts]}}


def _as_chunk(result: ChatResult) -> ChatGenerationChunk:
    message = result.generations[0].message
    tool_call_chunks = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call.get("id"), index=index)
        for index, call in enumerate(getattr(message, "tool_calls", []))
    ]
    chunk = AIMessageChunk(
        content=message.content,
        response_metadata=message.response_metadata,
        id=message.id,
        tool_call_chunks=tool_call_chunks,
        usage_metadata=getattr(message, "usage_metadata", None),
    )
    return ChatGenerationChunk(message=chunk)
