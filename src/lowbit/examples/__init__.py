"""Small built-in examples that are not language models (lowbit is not for LLMs alone)."""
