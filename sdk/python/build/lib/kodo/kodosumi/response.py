"""Kodosumi's result helpers (`kodosumi.response`): `{body}` models that
the Tracer encodes as `{"Markdown": {"body": ...}}` and so on."""
from .tracer import HTML, Markdown, Text

__all__ = ["Markdown", "HTML", "Text"]
