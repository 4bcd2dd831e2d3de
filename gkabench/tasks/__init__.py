"""Task generators and scorers (mqar, niah, rag, longqa)."""
