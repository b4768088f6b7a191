"""Removing a secret from text that came from elsewhere, before it reaches a log line or an error.

A server that echoes the API key rarely echoes it verbatim: it upper-cases it, puts it after
a prefix (`Bearer ...`), percent-encodes it in a URL, escapes it in JSON or HTML, or cuts
it off in an excerpt. `Redactor(secret)` replaces every run of text that holds any 8
characters of the secret in a row (the whole secret when it is shorter), in any letter case,
and read through up to three layers of `%XX`, `\\uXXXX`, `\\xXX`, `\\\\` and `&#...;` escapes.
Because any 8-character piece is enough, text may be cut before it is redacted: a piece cut
in two leaves at most 7 characters on either side.

    redact = Redactor(api_key, "<api key>")
    log.warn("MISP said: {message}", message=redact(body_text))
"""

from __future__ import annotations

import re
from array import array

__all__ = ["WINDOW", "Redactor"]

#: How many characters of the secret in a row are redacted.
WINDOW = 8
_LAYERS = 3
_ESCAPE = re.compile(
    r"%(?P<percent>[0-9A-Fa-f]{2})"
    r"|(?P<backslash>\\\\)"
    r"|\\u(?P<unicode>[0-9A-Fa-f]{4})"
    r"|\\x(?P<byte>[0-9A-Fa-f]{2})"
    r"|&#[xX](?P<hexentity>[0-9A-Fa-f]{1,6});"
    r"|&#(?P<entity>[0-9]{1,7});"
)
# Lower-cases ASCII letters only, so that a text keeps its length (str.lower() may not).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Redactor:
    """Calling it returns `text` with every echo of `secret` replaced by `label`."""

    __slots__ = ("_label", "_pieces", "_size")

    def __init__(self, secret: str, label: str = "<secret>") -> None:
        lowered = secret.translate(_ASCII_LOWER)
        self._size = min(WINDOW, len(lowered))
        self._pieces = frozenset(
            lowered[start : start + self._size] for start in range(len(lowered) - self._size + 1)
        )
        self._label = label

    def __repr__(self) -> str:
        return "Redactor(<secret>)"

    def __call__(self, text: str) -> str:
        if not self._size or len(text) < self._size:
            return text
        spans = self._found_in(text)
        layer, starts, ends = text, None, None
        for _ in range(_LAYERS):
            decoded = _unescaped(layer)
            if decoded is None:
                break
            layer, inner_starts, inner_ends = decoded
            if starts is None or ends is None:
                starts, ends = inner_starts, inner_ends
            else:
                starts = array("q", (starts[i] for i in inner_starts))
                ends = array("q", (ends[i - 1] for i in inner_ends))
            spans.extend((starts[begin], ends[end - 1]) for begin, end in self._found_in(layer))
        return _replaced(text, spans, self._label)

    def _found_in(self, text: str) -> list[tuple[int, int]]:
        """Where the pieces of the secret are in `text` (ASCII case ignored), as spans."""
        lowered = text.translate(_ASCII_LOWER)
        size = self._size
        spans = []
        for piece in self._pieces:
            start = lowered.find(piece)
            while start != -1:
                spans.append((start, start + size))
                start = lowered.find(piece, start + 1)
        return spans


def _unescaped(text: str) -> tuple[str, array[int], array[int]] | None:
    """`text` with one layer of escapes decoded, and for each character of the result the
    span of `text` it came from (its start in the first array, its end in the second);
    None when `text` holds no escape."""
    if _ESCAPE.search(text) is None:
        return None
    parts: list[str] = []
    starts = array("q")
    ends = array("q")
    position = 0
    for match in _ESCAPE.finditer(text):
        char = _character(match)
        if char is None:
            continue  # stays in the text as it is
        begin, end = match.span()
        parts.append(text[position:begin])
        starts.extend(range(position, begin))
        ends.extend(range(position + 1, begin + 1))
        parts.append(char)
        starts.append(begin)
        ends.append(end)
        position = end
    parts.append(text[position:])
    starts.extend(range(position, len(text)))
    ends.extend(range(position + 1, len(text) + 1))
    return "".join(parts), starts, ends


def _character(match: re.Match[str]) -> str | None:
    if match.group("backslash") is not None:
        return "\\"
    for group, base in (
        ("percent", 16),
        ("unicode", 16),
        ("byte", 16),
        ("hexentity", 16),
        ("entity", 10),
    ):
        digits = match.group(group)
        if digits is not None:
            code = int(digits, base)
            return chr(code) if code <= 0x10FFFF else None
    return None


def _replaced(text: str, spans: list[tuple[int, int]], label: str) -> str:
    """`text` with each run of overlapping or touching `spans` replaced by one `label`."""
    if not spans:
        return text
    spans.sort()
    parts = []
    position = 0
    run_start, run_end = spans[0]
    for start, end in spans[1:]:
        if start <= run_end:
            run_end = max(run_end, end)
            continue
        parts += [text[position:run_start], label]
        position = run_end
        run_start, run_end = start, end
    parts += [text[position:run_start], label, text[run_end:]]
    return "".join(parts)
