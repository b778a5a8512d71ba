"""Student fine-tuning from a snapshot, student evaluation."""
