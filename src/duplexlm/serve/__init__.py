"""Serving: an OpenAI-compatible HTTP server over the decoding engine, with a web page (``duplex serve``)."""

from .app import ServerSettings, capabilities, create_app, serve

__all__ = ["ServerSettings", "capabilities", "create_app", "serve"]
