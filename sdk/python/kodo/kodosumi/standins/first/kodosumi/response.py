"""`kodosumi.response`, as kodo's stand-in."""
from kodo.kodosumi.response import HTML, Markdown, Text

__all__ = ["Markdown", "HTML", "Text"]
