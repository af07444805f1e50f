"""`mtad bench`: datasets, task scoring, metrics and energy meters, independent of the decoding engine."""
