"""HF-compatible causal LMs stacking any registered mixer."""
