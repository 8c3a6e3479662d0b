"""Training the offline guard (data, model-written replies, the training run); never imported at run time."""
