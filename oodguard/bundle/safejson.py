"""JSON parsing with bounds, for the documents inside a bundle.

``json.loads`` alone is not total on hostile input: a 5 000-digit integer raises ``ValueError``
(Python's int-from-string limit), deep nesting raises ``RecursionError``, and ``NaN``,
``Infinity`` or ``1e999`` parse to non-finite floats. Integers longer than
``MAX_NUMBER_CHARS`` are refused before conversion; floats are parsed by the C scanner (any
length converts, linearly) and checked finite afterwards. :func:`load_object` refuses all of these
— and duplicate keys, which would make two readers disagree on a document — with a
``BundleError`` that names the file, and bounds the nesting depth of what it returns.
:func:`get`, :func:`int_in` and :func:`str_map` read typed fields from a parsed document,
raising ``ValueError`` that names the field (bools are not numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from oodguard.errors import BundleError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "get", "int_in", "load_object", "str_map"]

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 64


class _Refused(ValueError):
    """A value the bundle format does not allow (raised from inside the parser's hooks)."""


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(
            f"an integer of {len(text)} characters (at most {MAX_NUMBER_CHARS} are allowed)"
        )
    return int(text)


def _constant(text: str) -> Any:
    raise _Refused(f"{text}; numbers in a bundle must be finite (JSON has no NaN or Infinity)")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key, value in pairs:
        if key in d:
            raise _Refused(f"the key {key!r} twice in one object")
        d[key] = value
    return d


def _walk(doc: Any) -> int:
    """Nesting depth of a parsed document, checking that every float is finite (``1e999``
    parses to inf). Iterative: a deep document cannot recurse here."""
    if not isinstance(doc, (dict, list)):
        _finite(doc)
        return 0
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                _finite(child)
    return deepest


def _finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused("a number that overflows a float64 to infinity")


def load_object(raw: bytes, what: str, fix: str) -> dict[str, Any]:
    """Parse ``raw`` as a UTF-8 JSON object within the bounds above.

    Parameters
    ----------
    raw : the file's bytes
    what : how to name the file in messages (its path)
    fix : how to fix a refused file, appended to every message

    Raises
    ------
    BundleError
        Not UTF-8, not JSON, not an object, nested deeper than ``MAX_DEPTH``, an integer longer
        than ``MAX_NUMBER_CHARS`` characters, a number that is not finite, or a duplicate key.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{what} is not UTF-8 text ({err}); {fix}") from err
    try:
        doc = json.loads(
            text, parse_int=_int, parse_constant=_constant, object_pairs_hook=_object,
        )
        depth = _walk(doc)
    except _Refused as err:
        raise BundleError(f"{what} holds {err}; {fix}") from err
    except RecursionError as err:
        raise BundleError(
            f"{what} is nested too deeply to parse (at most {MAX_DEPTH} levels); {fix}"
        ) from err
    except ValueError as err:  # json.JSONDecodeError and anything the decoder itself raises
        raise BundleError(f"{what} is not valid JSON: {err}; {fix}") from err
    if not isinstance(doc, dict):
        raise BundleError(f"{what} must hold a JSON object, not {type(doc).__name__}; {fix}")
    if depth > MAX_DEPTH:
        raise BundleError(f"{what} is nested deeper than {MAX_DEPTH} levels; {fix}")
    return doc


def get(
    d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    """``d[key]``, checked to be of ``kind`` (bools are not ints); ValueError naming the field."""
    if key not in d:
        if default is ...:
            raise ValueError(f"field {key!r} is missing")
        return default
    v = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        names = " or ".join("object" if k is dict else "array" if k is list else k.__name__
                            for k in kinds)
        raise ValueError(f"field {key!r} must be {names}, got {type(v).__name__} {v!r:.60}")
    return v


def int_in(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = get(d, key, int)
    if not lo <= v <= hi:
        raise ValueError(f"field {key!r} must lie in [{lo}, {hi}], got {v}")
    return int(v)


def str_map(d: Mapping[str, Any], key: str, default: Any = ...) -> dict[str, str]:
    m = get(d, key, dict, default)
    bad = [k for k, v in m.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"field {key!r} must map names to strings; {bad[0]!r} does not")
    return dict(m)
