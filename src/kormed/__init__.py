"""kormed: turn a Gemma-3-family medical model into a Korean-medicine model."""

__version__ = "0.1.0"
