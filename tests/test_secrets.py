"""Secrets stay secret: the MISP API key (and a SIEM token) never show in reprs, errors or logs.

A key that leaks does so through a side door: an object's `repr`, a server echoing the key in
an error body that we log, a config error that quotes the value it did not like. These tests
knock on each door with a distinctive key and look for any ten characters of it in what
comes out, since a cut excerpt leaks a prefix as surely as a whole key.
"""

from __future__ import annotations

import gc
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from misp_dns.config import load_config
from misp_dns.intel.misp_client import MispClient
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.registry import default_registry
from misp_dns.testing import FakeMisp, Fault
from misp_dns.values import ConfigError

KEY = "Sk7Vq2Xz9Lm4Np8Rt3Wb6Hc1Jd5Gf0Ya4Ue8Io2P"
TOKEN = "Bearer Tq5Mz8Kx1Vn4Bw7Rc0Hy3Pj6Ld9Gs2Fa"
TSIG_SECRET = "dHNpZyBzZWNyZXQgb2YgdGhlIGZsZWV0LCAzMiBieXRlcw=="
#: The decoded secret as a bytes repr shows it ("tsig secret of the fleet, 32 bytes").
TSIG_SHOWN = "tsig secret of the fleet, 32 bytes"
WINDOW = 10


def leaks(text: str, secret: str = KEY) -> list[str]:
    """The WINDOW-character pieces of `secret` found in `text`."""
    return [
        secret[start : start + WINDOW]
        for start in range(len(secret) - WINDOW + 1)
        if secret[start : start + WINDOW] in text
    ]


def _config_text(tmp_path: Path) -> str:
    (tmp_path / "fleet.key").write_text(TSIG_SECRET + "\n")
    return f"""
[server]
listen = ["127.0.0.1:53535"]
upstreams = ["127.0.0.1:53"]
state_dir = "{tmp_path / "state"}"

[[policy]]
type = "misp"
server_url = "https://misp.test"
api_key = "{KEY}"
sightings = true

[[export]]
type = "http"
url = "https://siem.test/ingest"
headers = {{ Authorization = "{TOKEN}" }}

[[export]]
type = "jsonl"
path = "{tmp_path / "queries.jsonl"}"

[[tsig_key]]
name = "fleet"
secret_file = "{tmp_path / "fleet.key"}"

[rpz]
zone = "rpz.misp-dns.example"
tsig_keys = ["fleet"]
"""


def _reachable(roots: list[Any]) -> Iterator[Any]:
    """Every object reachable from `roots`: through attributes, containers, bound methods and
    closures, but not through modules, classes or a function's globals (which would lead
    to the whole program, this test included)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        found = stack.pop()
        if id(found) in seen:
            continue
        seen.add(id(found))
        yield found
        if isinstance(found, types.ModuleType | type | types.FrameType | types.CodeType):
            continue
        if isinstance(found, types.FunctionType):
            cells = found.__closure__ or ()
            stack.extend(cell.cell_contents for cell in cells if _filled(cell))
            stack.extend(found.__defaults__ or ())
            continue
        if isinstance(found, types.MethodType):
            stack.extend([found.__self__, found.__func__])
            continue
        stack.extend(gc.get_referents(found))


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


# What holds a secret by nature and shows its content: the secret string itself, and the
# plain containers that hold it (the header dict a request is sent with).
_SHOWS_CONTENT = (str, bytes, bytearray, memoryview, dict, list, tuple, set, frozenset)
_NOT_OBJECTS = (types.ModuleType, type, types.FrameType, types.CellType, types.CodeType)


def test_no_object_of_a_built_server_shows_a_secret(tmp_path: Path) -> None:
    """Of every object the twistd options and the service tree hold (config, options,
    MISP client, policies, updater, sinks, HTTP clients, the RPZ primary and its TSIG
    keys...), none has a `repr` or `str` showing the API key, the HTTP sink's Authorization
    header or the TSIG secret."""
    from misp_dns.tap import Options, makeService

    path = tmp_path / "misp-dns.toml"
    path.write_text(_config_text(tmp_path))
    options = Options()
    options.parseOptions(["--config", str(path)])
    service = makeService(options)
    checked: set[str] = set()
    shown: dict[str, str] = {}
    for found in _reachable([options, service]):
        if isinstance(found, _SHOWS_CONTENT + _NOT_OBJECTS) or callable(found):
            continue
        checked.add(type(found).__qualname__)
        for text in (repr(found), str(found)):
            for secret in (KEY, TOKEN, TSIG_SECRET, TSIG_SHOWN):
                if leaks(text, secret):
                    shown.setdefault(type(found).__qualname__, text[:300])
    # The walk did reach what holds the secrets.
    holders = {
        "Config",
        "MispOptions",
        "MispClient",
        "MispBlockingPolicy",
        "IndicatorUpdater",
        "SightingsReporter",
        "RetryingHttp",
        "TsigKey",
        "ZoneServer",
    }
    assert holders | {"PolicyReloader", "HttpOptions", "HttpSink", "HTTPClient"} <= checked
    assert shown == {}
    # The key is there all the same, in the policy that sends it.
    assert any(isinstance(f, str) and f == KEY for f in _reachable([service]))


def test_options_and_config_reprs_hide_the_key(tmp_path: Path) -> None:
    """`repr` of the loaded config, each `[[policy]]`/`[[export]]` options object and the
    MISP client built from them never shows the key or the SIEM token."""
    path = tmp_path / "misp-dns.toml"
    path.write_text(_config_text(tmp_path))
    config = load_config(path, default_registry())
    misp = config.policy[0].options
    client = MispClient.from_options(misp, StubTreq(FakeMisp(KEY)), Clock())
    for found in (config, misp, config.export[0].options, client, config.policy, config.export):
        assert leaks(repr(found)) == [] and leaks(repr(found), TOKEN) == []
    assert misp.api_key == KEY


# -- the key echoed back by a server ------------------------------------------------------


def _fetch_collecting(fake: FakeMisp, steps: list[float]) -> list[str]:
    """Fetch once from `fake`, return the failure's texts and every log event's texts."""
    clock = Clock()
    with capturedLogs() as events:
        fetched = MispClient(
            "https://misp.test", KEY, StubTreq(fake), clock, random=lambda: 0.5
        ).fetch()
        clock.pump(steps)
    outcome: list[Any] = []
    fetched.addBoth(outcome.append)
    texts = [formatEvent(event) for event in events]
    texts += [repr({k: v for k, v in event.items() if k != "log_logger"}) for event in events]
    if outcome and isinstance(outcome[0], Failure):
        failure = outcome[0]
        texts += [str(failure.value), repr(failure.value), failure.getErrorMessage()]
    return texts


def _echo(body: bytes, status: int, json_wrapped: bool) -> Fault:
    if json_wrapped:
        message = body.decode()
        return Fault.json({"name": "Error", "message": message, "url": "/x"}, status=status)
    return Fault(status, headers={"Content-Type": "text/plain"}, body=body)


@given(
    before=st.integers(0, 420),
    after=st.integers(0, 40),
    status=st.sampled_from([200, 400, 401, 403, 404, 429, 500, 502, 503]),
    json_wrapped=st.booleans(),
)
# Across the end of a 120-byte body excerpt, and of a 300-character JSON message.
@example(before=100, after=0, status=500, json_wrapped=False)
@example(before=280, after=0, status=503, json_wrapped=True)
def test_a_key_echoed_anywhere_in_an_error_body_never_comes_out(
    before: int, after: int, status: int, json_wrapped: bool
) -> None:
    """Whatever error MISP answers, and wherever its body repeats the key (at the start, in
    the middle, across the point where an excerpt of the body is cut), no error message and
    no log line holds ten characters of it."""
    body = ("x" * before + KEY + "y" * after).encode()
    fake = FakeMisp(KEY)
    fake.script(*[_echo(body, status, json_wrapped)] * 3)
    texts = _fetch_collecting(fake, [1, 2, 4, 60, 60])
    found = {piece for text in texts for piece in leaks(text)}
    assert found == set(), next(text for text in texts if leaks(text))


def _all_percent_encoded(text: str) -> str:
    return "".join(f"%{ord(char):02X}" for char in text)


@pytest.mark.parametrize(
    "echo",
    [
        KEY.upper(),
        KEY.lower(),
        f"Bearer{KEY}",
        f"apikey={_all_percent_encoded(KEY)}",
        f"key: {KEY[:20]}...",
        '{"k": "' + "".join(f"\\u{ord(c):04x}" for c in KEY) + '"}',
        json.dumps({"k": "".join(f"\\u{ord(c):04x}" for c in KEY)}),
        "".join(f"&#{ord(c)};" for c in KEY[5:30]),
    ],
    ids=[
        "upper",
        "lower",
        "prefixed",
        "percent",
        "half",
        "json-escaped",
        "json-escaped-twice",
        "html-entities",
    ],
)
@pytest.mark.parametrize("status", [403, 500])
def test_an_altered_echo_of_the_key_never_comes_out(echo: str, status: int) -> None:
    """MISP (or a proxy in front of it) echoing the key upper-cased, after a prefix with no
    space, percent-encoded, cut in half or escaped: no error and no log line holds 8 of its
    characters in a row, in any case or encoding."""
    from test_redact import leaked

    fake = FakeMisp(KEY)
    fake.script(*[_echo(f"bad key {echo} given".encode(), status, True)] * 3)
    texts = _fetch_collecting(fake, [1, 2, 4, 60, 60])
    assert [text for text in texts if leaked(text)] == []
    assert any("<api key>" in text for text in texts)


@given(
    before=st.integers(0, 420),
    after=st.integers(0, 40),
    status=st.sampled_from([200, 400, 401, 403, 404, 429, 500, 502, 503]),
    json_wrapped=st.booleans(),
)
@example(before=100, after=0, status=500, json_wrapped=False)
@example(before=280, after=0, status=200, json_wrapped=True)
def test_a_key_echoed_in_a_sighting_refusal_never_comes_out(
    before: int, after: int, status: int, json_wrapped: bool
) -> None:
    """The same for the sightings reporter: whatever MISP answers a `/sightings/add` with,
    and wherever its body repeats the key, no log line holds ten characters of it."""
    body = ("x" * before + KEY + "y" * after).encode()
    fake = FakeMisp(KEY)
    fake.add_attribute("evil.example")
    fake.script(*[_echo(body, status, json_wrapped)] * 3)
    clock = Clock()
    http = StubTreq(fake)
    with capturedLogs() as events:
        reporter = SightingsReporter(
            "https://misp.test", KEY, http, clock, interval=60, random=lambda: 0.5
        )
        reporter.startService()
        reporter.sight("evil.example")
        for step in (60, 1, 2, 4, 60):
            clock.advance(step)
            http.flush()
    assert reporter.sent + reporter.failed == 1
    texts = [formatEvent(event) for event in events]
    texts += [repr({k: v for k, v in event.items() if k != "log_logger"}) for event in events]
    assert [text for text in texts if leaks(text)] == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault.redirect(f"https://elsewhere.test/attributes/restSearch?key={KEY}"),
        Fault.json({KEY: []}),
        Fault.json({"response": {"Attribute": {KEY: {}}}}),
        Fault.garbage(f"<html>{KEY}</html>".encode()),
    ],
    ids=["redirect-location", "json-key", "attribute-object", "html"],
)
def test_a_key_in_a_redirect_or_a_malformed_answer_never_comes_out(fault: Fault) -> None:
    """A redirect whose Location holds the key, and answers of the wrong shape built around
    it, fail the fetch with messages that do not hold it."""
    fake = FakeMisp(KEY)
    fake.script(fault)
    texts = _fetch_collecting(fake, [1, 2])
    assert [text for text in texts if leaks(text)] == []


# -- config errors ------------------------------------------------------------------------


def _problems(tmp_path: Path, policy: str, export: str = "") -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(f"[server]\nstate_dir = '{tmp_path}'\n\n[[policy]]\n{policy}\n{export}")
    registry = default_registry()
    try:
        config = load_config(path, registry)
        from misp_dns.build import build_policies

        build_policies(config, registry, Clock())
    except ConfigError as error:
        return [*list(error.problems), str(error), repr(error)]
    except Exception as error:
        pytest.fail(f"loading the config crashed instead of naming the problem: {error!r}")
    raise AssertionError("the config was accepted")


MISP = 'type = "misp"\nserver_url = "https://misp.test"\n'


@pytest.mark.parametrize(
    ("policy", "export"),
    [
        (MISP + f'api_key = "{KEY}"\nupdate_interval = "soon"', ""),
        (MISP + f'api_key = "{KEY}"\napi_key_file = "/etc/misp.key"', ""),
        (f'type = "misp-feed"\nurl = "x"\napi_key = "{KEY}"', ""),
        (MISP + f'api_key = "{KEY} {KEY}"', ""),
        (MISP + f'api_key = "{KEY}\\u00e9"', ""),
        (MISP + f'api_key = ["{KEY}"]', ""),
        (MISP + f'api_key = {{ value = "{KEY}" }}', ""),
        (
            MISP + 'api_key = "k"',
            f'[[export]]\ntype = "http"\nurl = "https://siem.test"\nheaders = "{TOKEN}"',
        ),
        (
            MISP + 'api_key = "k"',
            f'[[export]]\ntype = "http"\nurl = "https://siem.test"\n'
            f'headers = {{ Authorization = ["{TOKEN}"] }}',
        ),
    ],
    ids=[
        "other-error",
        "key-and-key-file",
        "key-in-a-feed",
        "key-with-a-space",
        "key-not-ascii",
        "key-in-an-array",
        "key-in-a-table",
        "token-as-a-string",
        "token-in-an-array",
    ],
)
def test_config_errors_never_quote_a_secret(tmp_path: Path, policy: str, export: str) -> None:
    """A config that does not load names the key (or the SIEM's Authorization header) that
    is wrong, and never quotes its value, whatever the mistake: a wrong type, characters a
    header cannot carry, a key where none is expected."""
    problems = _problems(tmp_path, policy, export)
    assert problems
    assert [line for line in problems if leaks(line) or leaks(line, TOKEN)] == []


def test_key_file_content_is_never_quoted(tmp_path: Path) -> None:
    """A key file holding two keys, or bytes that are not UTF-8, is refused without its
    content being shown."""
    for content in (f"{KEY}\n{KEY}\n".encode(), KEY.encode() + b"\xff\xfe"):
        key_file = tmp_path / "misp.key"
        key_file.write_bytes(content)
        key_file.chmod(0o600)
        problems = _problems(tmp_path, MISP + f'api_key_file = "{key_file}"')
        assert [line for line in problems if leaks(line)] == []


def test_a_failed_fetch_deferred_holds_no_key_in_its_traceback() -> None:
    """The failure a refused fetch ends with, traceback included, does not show the key,
    even though MISP echoed it."""
    fake = FakeMisp("another-key")
    fake.script(Fault.json({"name": f"bad key {KEY}", "message": f"bad key {KEY}"}, 403))
    fetched: Deferred[Any] = MispClient("https://misp.test", KEY, StubTreq(fake), Clock()).fetch()
    outcome: list[Any] = []
    fetched.addBoth(outcome.append)
    failure = outcome[0]
    assert isinstance(failure, Failure)
    assert leaks(failure.getTraceback()) == []
    assert leaks(json.dumps(str(failure.value))) == []


def test_tsig_secret_readable_by_others_and_unsigned_rpz_are_warned_of(tmp_path: Path) -> None:
    """--check-config and the start warn of a TSIG secret file others can read (naming the
    file and its mode, never its content) and of an [rpz] serving unsigned transfers."""
    from misp_dns.build import security_warnings

    secret = tmp_path / "fleet.key"
    secret.write_text(TSIG_SECRET)
    secret.chmod(0o644)
    path = tmp_path / "misp-dns.toml"
    path.write_text(
        f'[[tsig_key]]\nname = "fleet"\nsecret_file = "{secret}"\n'
        '[rpz]\nzone = "rpz.misp-dns.example"\n'
    )
    path.chmod(0o600)
    warnings = security_warnings(load_config(path), str(path))
    assert warnings == [
        f"tsig_key[0].secret_file {str(secret)!r} can be read by other users than its owner"
        " (mode 0644); the TSIG secret in it should not (chmod 600)",
        "rpz.tsig_keys is empty: zone transfers are not signed, so any client in"
        " rpz.allow_transfer can read the zone and a forged primary cannot be told apart",
    ]
    secret.chmod(0o600)
    assert len(security_warnings(load_config(path), str(path))) == 1
    assert not leaks("\n".join(warnings), TSIG_SECRET)
