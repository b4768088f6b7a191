"""Reading one array of a big JSON document element by element.

A MISP page of 5,000 attributes decodes, with `json.loads`, into a few hundred thousand
dicts, lists and strings that all live at once for a moment. They cost tens of MiB that the
allocator keeps after they are freed, and the decoder holds the GIL for the whole document.
`array_elements` walks the document instead and decodes the elements of one array (for a
restSearch answer, `response.Attribute`) one at a time with the standard decoder: only one
attribute's objects exist at a time, and the GIL is free to change threads between two.

It accepts only documents that `json.loads` reads the same way; anything else (another
shape, a missing or repeated key on the path, bad JSON, trailing data) raises
`NotStreamable` or `json.JSONDecodeError`, both `ValueError`s, so the caller can fall back
to `json.loads` and its usual errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator, Sequence

__all__ = ["NotStreamable", "array_elements"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class NotStreamable(ValueError):
    """The document has no single array at the path, or is not JSON this reader can walk."""


def array_elements(text: str, path: Sequence[str]) -> Iterator[object]:
    """Yield, decoded one by one, the elements of the array at `path` (object keys from the
    top) of the JSON document `text`; the rest of the document is checked and skipped."""
    if not path:
        raise ValueError("the path names at least one key")
    at = _skip(text, 0)
    at = yield from _object(text, at, tuple(path))
    if _skip(text, at) != len(text):
        raise NotStreamable("data after the document")


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(text: str, at: int, char: str) -> int:
    if text[at : at + 1] != char:
        raise NotStreamable(f"expected {char!r} at {at}")
    return _skip(text, at + 1)


def _object(text: str, at: int, path: tuple[str, ...]) -> Generator[object, None, int]:
    """Walk the object at `at` down `path`; return where it ends."""
    at = _expect(text, at, "{")
    found = False
    if text[at : at + 1] != "}":
        while True:
            if text[at : at + 1] != '"':
                raise NotStreamable(f"expected a key at {at}")
            key, at = _DECODER.raw_decode(text, at)
            at = _expect(text, _skip(text, at), ":")
            if key == path[0]:
                if found:
                    # json.loads keeps the last of repeated keys; leave that case to it.
                    raise NotStreamable(f"key {key!r} repeated")
                found = True
                if len(path) == 1:
                    at = yield from _array(text, at)
                else:
                    at = yield from _object(text, at, path[1:])
            else:
                _, at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            if text[at : at + 1] != ",":
                break
            at = _skip(text, at + 1)
    if not found:
        raise NotStreamable(f"no key {path[0]!r}")
    if text[at : at + 1] != "}":
        raise NotStreamable(f"expected ',' or '}}' at {at}")
    return at + 1


def _array(text: str, at: int) -> Generator[object, None, int]:
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
