"""slimformer: make Hugging Face transformers smaller and faster, and prove it."""

__version__ = "0.1.0"
