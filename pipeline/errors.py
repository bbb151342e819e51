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


def check_choice(name: str, value, valid: Iterable) -> None:
    """Raise ``invalid <name> '<value>'; did you mean ...? valid: ...`` unless valid."""
    valid = list(valid)
    if value not in valid:
        raise KerascopeError(f"invalid {name} '{value}'; {choices_hint(str(value), valid)}")


def check_positive(name: str, value, at_most: float | None = None, optional: bool = False) -> None:
    """Raise ``'<name>' must be a positive number`` (or ``at most ...``) unless it is.

    NaN passes (it is not <= 0): where it matters, the computation reports it.

    Args:
        name: The setting, as the user writes it (``attribute.batch_size``).
        value: Its value.
        at_most: An upper bound, if any.
        optional: None is allowed (it means "not set").
    """
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or value <= 0:
        raise KerascopeError(f"'{name}' must be a positive number, got {value!r}")
    if at_most is not None and value > at_most:
        raise KerascopeError(f"'{name}' must be at most {at_most}, got {value!r}")


def check_range(name: str, value, low: float, high: float, high_open: bool = False) -> None:
    """Raise ``'<name>' must be in [low, high]`` (or ``[low, high)``) unless it is."""
    inside = value is not None and low <= value and (value < high if high_open else value <= high)
    if not inside:
        bracket = ")" if high_open else "]"
        raise KerascopeError(f"'{name}' must be in [{low}, {high}{bracket}, got {value!r}")


_interrupted = False


def interrupt_handler(signum, frame) -> None:
    """SIGINT: remember it, then raise ``KeyboardInterrupt`` as Python's default does.

    Remembered because a ``KeyboardInterrupt`` raised while TensorFlow runs an op can be
    swallowed on its way out (a Ctrl-C during training once let all 200 epochs finish);
    :func:`raise_if_interrupted` raises it again at the next safe point.
    """
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived (see :func:`interrupt_handler`)."""
    if _interrupted:
        raise KeyboardInterrupt
