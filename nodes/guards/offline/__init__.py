"""The offline guard at run time: the fine-tuned MiniLM network, its precision choice and the shipped artifact."""
