"""The export's one error type; the CLI shows its message as one line."""

from __future__ import annotations


class ExportError(RuntimeError):
    """Export refused: bad input, a failed check, or an unwritable destination."""
