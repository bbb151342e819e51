"""The one error type users see, and helpers that phrase its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KerascopeError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    Stage entry points catch this, print ``error: <message>`` and exit with status 2.
    """


def choices_hint(value: str, valid: Iterable[str], limit: int = 12) -> str:
    """Phrase the valid choices for ``value``, closest matches first.

    Args:
        value: What the user asked for.
        valid: Every accepted value.
        limit: How many choices to list before eliding the rest.

    Returns:
        A fragment such as ``"did you mean 'conv2d'? valid: conv2d, dense, ..."``.
    """
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), valid, n=3, cutoff=0.5)
    shown = valid[:limit]
    more = f", ... ({len(valid) - limit} more)" if len(valid) > limit else ""
    prefix = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"{prefix}valid: {', '.join(shown)}{more}"
