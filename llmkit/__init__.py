"""llmkit: exact, streaming tools for the lifecycle of Chinese LLaMA-family weights."""

__version__ = "0.1.0"
