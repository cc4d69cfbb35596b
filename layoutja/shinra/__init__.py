"""SHINRA attribute extraction: labels, the fine-tuning task, prediction, the scorer."""
