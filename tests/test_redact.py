"""Redacting a secret's echoes: any 8 characters of it in a row, in any case or escaping.

The readings a test looks through (percent-decoding, HTML entities, backslash escapes) are
the standard library's, not the redactor's, so that both do not share a blind spot.
"""

from __future__ import annotations

import html
import re
from urllib.parse import unquote

from hypothesis import example, given
from hypothesis import strategies as st

from misp_dns.redact import WINDOW, Redactor

KEY = "Sk7Vq2Xz9Lm4Np8Rt3Wb6Hc1Jd5Gf0Ya4Ue8Io2P"
LABEL = "<api key>"
# Characters that are in no key and start no escape.
FILLER = " .,:;!?()[]{}<>\"'@#$^*_|~`=+-/"


def _backslashes(text: str) -> str:
    return re.sub(
        r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|\\(\\)",
        lambda m: m.group(3) or chr(int(m.group(1) or m.group(2), 16)),
        text,
    )


def readings(text: str) -> list[str]:
    """`text` as a reader may decode it: as is, and through up to three layers of escapes."""
    forms = [text]
    for _ in range(3):
        forms.append(_backslashes(html.unescape(unquote(forms[-1]))))
    return [form.lower() for form in forms]


def leaked(text: str, secret: str = KEY) -> list[str]:
    """The WINDOW-character pieces of `secret` that some reading of `text` holds."""
    lowered = secret.lower()
    pieces = {lowered[i : i + WINDOW] for i in range(len(lowered) - WINDOW + 1)}
    return sorted({piece for form in readings(text) for piece in pieces if piece in form})


ENCODINGS = {
    "plain": lambda c: c,
    "percent": lambda c: f"%{ord(c):02X}",
    "percent-lower": lambda c: f"%{ord(c):02x}",
    "percent-twice": lambda c: f"%25{ord(c):02X}",
    "json": lambda c: f"\\u{ord(c):04x}",
    "json-twice": lambda c: f"\\\\u{ord(c):04x}",
    "backslash-x": lambda c: f"\\x{ord(c):02x}",
    "entity": lambda c: f"&#{ord(c)};",
    "hex-entity": lambda c: f"&#x{ord(c):X};",
}


@st.composite
def echoes(draw: st.DrawFn) -> str:
    """A piece of KEY of 8 or more characters, each in a random case and escaping."""
    length = draw(st.integers(WINDOW, len(KEY)))
    start = draw(st.integers(0, len(KEY) - length))
    piece = KEY[start : start + length]
    out = []
    for char in piece:
        char = char.upper() if draw(st.booleans()) else char.lower()
        out.append(ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))](char))
    return "".join(out)


@given(
    before=st.text(FILLER, max_size=30),
    echo=echoes(),
    between=st.text(FILLER, max_size=5),
    again=echoes(),
    after=st.text(FILLER, max_size=30),
)
@example(before="", echo=KEY.upper(), between="", again="", after="")
@example(before="Bearer ", echo=KEY, between=" ", again=KEY.lower(), after="")
@example(before="", echo="".join(f"%{ord(c):02X}" for c in KEY), between="", again="", after="")
def test_no_reading_of_a_redacted_text_holds_eight_characters_of_the_key(
    before: str, echo: str, between: str, again: str, after: str
) -> None:
    """Whatever case and escaping an echo of the key (or of 8+ characters of it) comes in,
    after a prefix, twice, back to back: no reading of the redacted text holds 8 of its
    characters in a row, and the text around the echoes is kept."""
    text = before + echo + between + again + after
    assert leaked(text)  # the test does see the echo before redaction
    redacted = Redactor(KEY, LABEL)(text)
    assert leaked(redacted) == []
    assert redacted.startswith(before) and redacted.endswith(after)
    assert LABEL in redacted


@given(st.text(FILLER + "abcdefghij%&#\\ux0123456789;", max_size=200))
def test_text_without_the_key_is_unchanged(text: str) -> None:
    """Text that holds no 8 characters of the key in any reading comes out as it went in."""
    if leaked(text):
        return
    assert Redactor(KEY, LABEL)(text) == text


def test_seven_characters_are_left_and_eight_are_not() -> None:
    """The rule is 8 characters in a row: 7 stay (as ordinary text would), 8 go."""
    redact = Redactor(KEY, LABEL)
    assert redact(f"x{KEY[3:10]}x") == f"x{KEY[3:10]}x"
    assert redact(f"x{KEY[3:11]}x") == f"x{LABEL}x"


def test_a_short_secret_is_redacted_whole_in_any_case() -> None:
    """A secret shorter than 8 characters is redacted where it appears whole."""
    assert Redactor("s3cret", LABEL)("key S3CRET is wrong") == f"key {LABEL} is wrong"


def test_the_redactor_does_not_show_the_secret() -> None:
    """Its repr says nothing of the secret."""
    assert leaked(repr(Redactor(KEY))) == []
