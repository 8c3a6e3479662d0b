"""guardgraph inside other LangChain code: ``GuardedChatModel``, a drop-in guarded chat model."""
