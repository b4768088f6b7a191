"""Reading the big arrays of a JSON document element by element.

A MISP page of 5,000 attributes decodes, with `json.loads`, into a few hundred thousand
dicts, lists and strings that all live at once for a moment. They cost tens of MiB that the
allocator keeps after they are freed, and the decoder holds the GIL for the whole document.
The readers here walk the document instead and decode the elements of the big arrays one at
a time with the standard decoder: only one attribute's objects exist at a time, and the GIL
is free to change threads between two.

- `array_elements(text, ("response", "Attribute"))`: the elements of one array (a
  restSearch answer's attributes);
- `object_members(text, ("Event",), {"Attribute", "Object"})`: the members of one object,
  those named in the set given as one `(key, element)` pair per element of their array (a
  feed event's attributes and objects beside its `uuid` and `info`).

Both accept only documents that `json.loads` reads the same way; anything else (another
shape, a missing or repeated key, bad JSON, trailing data) raises `NotStreamable` or
`json.JSONDecodeError`, both `ValueError`s, so the caller can fall back to `json.loads` and
its usual errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Generator, Iterator, Sequence

__all__ = ["NotStreamable", "array_elements", "object_members"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()

_Walk = Generator[object, None, int]


class NotStreamable(ValueError):
    """The document does not have the shape asked for, or is not JSON this reader can walk."""


def array_elements(text: str, path: Sequence[str]) -> Iterator[object]:
    """Yield, decoded one by one, the elements of the array at `path` (object keys from the
    top) of the JSON document `text`; the rest of the document is checked and skipped."""
    if not path:
        raise ValueError("the path names at least one key")
    yield from _document(text, tuple(path), _array)


def object_members(
    text: str, path: Sequence[str], streamed: Collection[str]
) -> Iterator[tuple[str, object]]:
    """Yield `(key, value)` for each member of the object at `path` (object keys from the
    top; empty for the top object itself) in document order; a member named in `streamed`
    must be an array and gives one `(key, element)` per element instead."""

    def members(text: str, at: int) -> _Walk:
        return _members(text, at, streamed)

    yield from _document(text, tuple(path), members)  # type: ignore[misc]


def _document(text: str, path: tuple[str, ...], leaf: Callable[[str, int], _Walk]) -> _Walk:
    at = _skip(text, 0)
    at = yield from (_object(text, at, path, leaf) if path else leaf(text, at))
    if _skip(text, at) != len(text):
        raise NotStreamable("data after the document")
    return at


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(text: str, at: int, char: str) -> int:
    if text[at : at + 1] != char:
        raise NotStreamable(f"expected {char!r} at {at}")
    return _skip(text, at + 1)


def _keys(text: str, at: int) -> Generator[tuple[str, int], int, int]:
    """Walk the members of the object at `at`: send back where each value ends after
    receiving its key and where it starts. Repeated keys are refused, as json.loads keeps
    only the last of them. Returns where the object ends."""
    at = _expect(text, at, "{")
    seen: set[str] = set()
    if text[at : at + 1] == "}":
        return at + 1
    while True:
        if text[at : at + 1] != '"':
            raise NotStreamable(f"expected a key at {at}")
        key, at = _DECODER.raw_decode(text, at)
        if key in seen:
            raise NotStreamable(f"key {key!r} repeated")
        seen.add(key)
        at = _expect(text, _skip(text, at), ":")
        at = _skip(text, (yield key, at))
        if text[at : at + 1] != ",":
            break
        at = _skip(text, at + 1)
    if text[at : at + 1] != "}":
        raise NotStreamable(f"expected ',' or '}}' at {at}")
    return at + 1


def _object(text: str, at: int, path: tuple[str, ...], leaf: Callable[[str, int], _Walk]) -> _Walk:
    """Walk the object at `at` down `path`, handing the value at its end to `leaf`."""
    keys = _keys(text, at)
    found = False
    try:
        key, start = next(keys)
        while True:
            if key == path[0]:
                found = True
                if len(path) == 1:
                    end = yield from leaf(text, start)
                else:
                    end = yield from _object(text, start, path[1:], leaf)
            else:
                _, end = _DECODER.raw_decode(text, start)
            key, start = keys.send(end)
    except StopIteration as over:
        if not found:
            raise NotStreamable(f"no key {path[0]!r}") from None
        end_of_object: int = over.value
        return end_of_object


def _members(text: str, at: int, streamed: Collection[str]) -> _Walk:
    """Yield the members of the object at `at`, the `streamed` ones element by element."""
    keys = _keys(text, at)
    try:
        key, start = next(keys)
        while True:
            if key in streamed:
                elements = _array(text, start)
                try:
                    while True:
                        yield key, next(elements)
                except StopIteration as array_over:
                    end = array_over.value
            else:
                value, end = _DECODER.raw_decode(text, start)
                yield key, value
            key, start = keys.send(end)
    except StopIteration as over:
        end_of_object: int = over.value
        return end_of_object


def _array(text: str, at: int) -> _Walk:
    """Yield the elements of the array at `at`; return where it ends."""
    at = _expect(text, at, "[")
    if text[at : at + 1] == "]":
        return at + 1
    while True:
        element, at = _DECODER.raw_decode(text, at)
        yield element
        at = _skip(text, at)
        if text[at : at + 1] != ",":
            break
        at = _skip(text, at + 1)
    if text[at : at + 1] != "]":
        raise NotStreamable(f"expected ',' or ']' at {at}")
    return at + 1
