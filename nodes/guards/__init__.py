"""Guard backends: Llama Guard over transformers or any LangChain model, and the offline default guard."""

from guardgraph.nodes.guards.base import BaseGuard, Guard, error_verdict

__all__ = ["BaseGuard", "Guard", "error_verdict"]
