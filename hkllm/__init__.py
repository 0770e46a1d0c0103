"""hkllm: make and run a Hong Kong-localized LLM."""
__version__ = "0.1.0"
