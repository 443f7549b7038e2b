"""Tiny-LLM: train a small Llama-2-style model on TinyStories."""

__version__ = "0.1.0"
