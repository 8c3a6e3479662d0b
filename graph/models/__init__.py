"""Building what the graph needs from a config: guards (one registry), chat models, checkpointers."""
