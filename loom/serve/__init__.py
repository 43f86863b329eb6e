"""An OpenAI-compatible HTTP server for Loom's models (`loom serve`; needs the 'serve' extra)."""
from .app import Server

__all__ = ["Server"]
