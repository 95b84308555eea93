"""Bounds on a JSON document checked before ``json.loads`` builds anything from it.

``json.loads`` recurses once per nesting level (a deep enough document ends in a
``RecursionError``) and refuses integers longer than 4300 digits with a ``ValueError``; both
would surface as server errors, and a megabyte of brackets costs far more to parse than to
refuse. :func:`check_json_bounds` refuses nesting deeper than :data:`MAX_JSON_DEPTH` and number
literals longer than :data:`MAX_NUMBER_CHARS` at C speed (``bytes.translate`` and a substring
search: a few percent of ``json.loads``).
"""

from __future__ import annotations

import re

import numpy as np

from oodguard.serve.refusals import ProtocolError

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS",
    "bracket_depth",
    "brackets",
    "check_json_bounds",
    "has_long_number",
]

#: deepest JSON nesting accepted (an infer request needs 3 + the input's rank)
MAX_JSON_DEPTH = 32
#: longest JSON number literal accepted (a float64 needs at most 24 characters)
MAX_NUMBER_CHARS = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = np.zeros(256, np.int8)
_BRACKET[list(b"[{")] = 1
_BRACKET[list(b"]}")] = -1
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_NUMBER_MASK = bytes(ord("1") if c in b"-+0123456789.eE" else ord(" ") for c in range(256))
_LONG_NUMBER = b"1" * (MAX_NUMBER_CHARS + 1)


def brackets(text: bytes) -> bytes:
    """The brackets and braces of ``text``, in order (everything else removed)."""
    return text.translate(None, _NOT_BRACKET)


def bracket_depth(only_brackets: bytes) -> int:
    """The deepest nesting of a string of brackets (see :func:`brackets`), summed in 1 MiB
    chunks so that the running sums stay bounded int32s."""
    deepest = level = 0
    step = 1 << 20
    for start in range(0, len(only_brackets), step):
        chunk = np.frombuffer(only_brackets, np.uint8, min(step, len(only_brackets) - start),
                              start)
        run = np.cumsum(_BRACKET[chunk], dtype=np.int32) + level
        deepest, level = max(deepest, int(run.max())), int(run[-1])
    return deepest


def _too_deep(text: bytes) -> bool:
    found = brackets(text)  # C speed; a few bytes for most requests
    return len(found) > MAX_JSON_DEPTH and bracket_depth(found) > MAX_JSON_DEPTH


def has_long_number(text: bytes) -> bool:
    """Whether ``text`` holds a run of number characters longer than MAX_NUMBER_CHARS."""
    return _LONG_NUMBER in text.translate(_NUMBER_MASK)


def check_json_bounds(text: bytes) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and numbers longer than MAX_NUMBER_CHARS.

    Only when a fast check trips are string literals (where brackets and digits are allowed)
    blanked out and the check repeated exactly.

    Raises
    ------
    ProtocolError
        400 with ``reason="json"`` and a message that says the bound.
    """
    deep, long = _too_deep(text), has_long_number(text)
    if not (deep or long):
        return
    bare = _STRING.sub(b'""', text)
    if deep and _too_deep(bare):
        raise ProtocolError(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels; an infer "
                            "request needs 3 plus the input's rank", reason="json")
    if long and has_long_number(bare):
        raise ProtocolError(f"a JSON number is longer than {MAX_NUMBER_CHARS} characters; "
                            "send float32 values (9 significant digits suffice)",
                            reason="json")
