"""`misp-dns`: ask the running server why a name is blocked, how it is doing, or to refresh.

    misp-dns explain NAME [TYPE]     what each policy decides about NAME (type A by default)
    misp-dns status                  policies, indicators, refreshes, sightings, export drops,
                                     the cache
    misp-dns refresh [POLICY]        fetch indicators now (every policy fed by indicators,
                                     or one: policy[1], misp, misp-connector)
    misp-dns check-config            = twistd misp-dns --check-config --config PATH
    misp-dns run                     = twistd -n --pidfile= misp-dns --config PATH

Each takes `--config PATH` (default /etc/misp-dns/misp-dns.toml). explain, status and
refresh read only the `[admin]` table of that file, to find the listener and its token, and
talk to the server over HTTP (`misp_dns.admin`); they print for people by default and the
server's JSON with `--json`. Exit status: 0 done, 1 the server said no (a failed refresh, a
bad name), 2 the config or the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from misp_dns.config import structure_section
from misp_dns.values import AdminConfig, ConfigError, HostPort

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/misp-dns/misp-dns.toml"

#: Exit statuses.
OK, REFUSED, UNREACHABLE = 0, 1, 2


class _Trouble(Exception):
    """Something to print as one `misp-dns: ...` line, with the exit status to leave with."""

    def __init__(self, message: str, status: int = UNREACHABLE) -> None:
        super().__init__(message)
        self.status = status


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help=f"the config file (default {DEFAULT_CONFIG})"
    )
    asking = argparse.ArgumentParser(add_help=False, parents=[common])
    asking.add_argument("--json", action="store_true", help="print the server's JSON")
    asking.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the server (default 30; 600 for refresh)",
    )
    parser = argparse.ArgumentParser(
        prog="misp-dns", description="Talk to a running misp-dns, or start one."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    explain = commands.add_parser(
        "explain", parents=[asking], help="what each policy decides about a name, and why"
    )
    explain.add_argument("name", metavar="NAME")
    explain.add_argument("type", metavar="TYPE", nargs="?", default="A")
    commands.add_parser("status", parents=[asking], help="policies, indicators, export, cache")
    refresh = commands.add_parser(
        "refresh", parents=[asking], help="fetch the indicators now and say how it went"
    )
    refresh.add_argument(
        "policy", metavar="POLICY", nargs="?", help="policy[N], a type or a source; default all"
    )
    commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the config (twistd misp-dns --check-config)",
    )
    commands.add_parser(
        "run", parents=[common], help="run in the foreground (twistd -n --pidfile= misp-dns)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); return the exit status."""
    options = _parser().parse_args(argv)
    if options.command == "check-config":
        return _twistd(["misp-dns", "--check-config", "--config", options.config])
    if options.command == "run":
        return _twistd(["-n", "--pidfile=", "misp-dns", "--config", options.config])
    timeout = options.timeout or (600.0 if options.command == "refresh" else 30.0)
    try:
        admin = _Admin.from_config(options.config, timeout)
        if options.command == "explain":
            query = urllib.parse.urlencode({"name": options.name, "type": options.type})
            reply = admin.call("GET", f"/api/explain?{query}")
            text = _explained(reply)
        elif options.command == "status":
            reply = admin.call("GET", "/api/status")
            text = _status(reply)
        else:
            body = {} if options.policy is None else {"policy": options.policy}
            reply = admin.call("POST", "/api/refresh", body)
            text = _refreshed(reply)
    except _Trouble as trouble:
        print(f"misp-dns: {trouble}", file=sys.stderr)
        return trouble.status
    print(json.dumps(reply, indent=2, ensure_ascii=False) if options.json else text)
    failed = options.command == "refresh" and not all(r["ok"] for r in reply["refreshed"])
    return REFUSED if failed else OK


def _twistd(arguments: list[str]) -> int:
    """Run twistd with `arguments` in this process, as `twistd ARGUMENTS` would."""
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *arguments]
    run()
    return OK


class _Admin:
    """The admin listener of the config's `[admin]` table, over HTTP."""

    def __init__(self, base: str, token: bytes | None, timeout: float) -> None:
        self.base = base
        self.token = token
        self.timeout = timeout
        # A proxy from the environment must not see the token or stand between us and a
        # listener on this machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_config(cls, path: str, timeout: float) -> _Admin:
        """Read `[admin]` (only that table) from the config at `path`."""
        from misp_dns.admin.web import read_token

        try:
            with open(path, "rb") as file:
                raw = tomllib.load(file)
        except OSError as exc:
            raise _Trouble(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise _Trouble(f"{path}: not valid TOML: {exc}") from None
        if "admin" not in raw:
            raise _Trouble(
                f'{path} has no [admin] section: add one (listen = "127.0.0.1:8053"),'
                " restart misp-dns, and try again"
            )
        admin, problems = structure_section(raw["admin"], AdminConfig, "admin")
        if admin is None:
            raise _Trouble("; ".join(problems))
        try:
            token = read_token(admin)
        except ConfigError as problem:
            raise _Trouble("; ".join(problem.problems)) from None
        return cls(f"http://{_reachable(admin.listen)}", token, timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON the server answers to `method path`; _Trouble when it cannot be had."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = "Bearer " + self.token.decode("ascii")
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise _Trouble(_http_problem(error), REFUSED) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise _Trouble(
                f"cannot reach misp-dns at {self.base}/ ({reason}); is it running with this"
                " [admin] listen?"
            ) from None
        except ValueError:
            raise _Trouble(f"{self.base}{path} did not answer JSON", REFUSED) from None


def _reachable(listen: HostPort) -> str:
    """Where to connect for a listener bound to `listen` (a wildcard means this machine)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    return str(HostPort(host, listen.port))


def _http_problem(error: urllib.error.HTTPError) -> str:
    if error.code == 401:
        return "the admin listener wants a token: set [admin] token_file to the server's"
    try:
        message = json.load(error)["error"]
    except Exception:
        message = error.reason
    return f"{message} (HTTP {error.code})"


# --- Human output ---------------------------------------------------------------------------


def _explained(reply: dict[str, Any]) -> str:
    question = f"{reply['name']} {reply['type']}"
    decision = reply["decision"]
    lines = [f"{question}: {_verdict(reply)}"]
    if decision == "block":
        lines.append(f"  indicator  {reply['indicator']} (matched by {reply['trigger']})")
        event = ", ".join(
            part
            for part in (
                reply.get("mispEventId") and f"id {reply['mispEventId']}",
                reply.get("mispEventUuid") and f"uuid {reply['mispEventUuid']}",
                reply.get("mispEventInfo") and json.dumps(reply["mispEventInfo"]),
            )
            if part
        )
        if event:
            lines.append(f"  MISP event {event}")
        if reply.get("mispAttributeUuid"):
            lines.append(f"  attribute  uuid {reply['mispAttributeUuid']}")
    lines.append("each policy in order:")
    for step in reply["policies"]:
        lines.append(f"  {step['policy']} {step['policyType']}: {_step(step)}")
    return "\n".join(lines)


def _verdict(reply: dict[str, Any]) -> str:
    decision = reply["decision"]
    where = f"{reply.get('policy', '')}, source {reply.get('source', '')}"
    if decision == "block" and reply.get("enforced", True):
        return f"BLOCKED ({where})"
    if decision == "block":
        return f"would be blocked, but the policy is in monitor mode: resolved ({where})"
    if decision == "allow":
        return f"allowed, never blocked ({where}; listed as {reply['indicator']})"
    if decision == "error":
        return f"SERVFAIL: {reply['policy']} raised {reply.get('error', 'an error')}"
    return "no policy has an opinion: resolved"


def _step(step: dict[str, Any]) -> str:
    decision = step["decision"]
    if decision == "none":
        return "no opinion"
    if decision == "error":
        return f"raised {step.get('error', 'an error')}"
    text = f"{decision} {step['indicator']}".rstrip()
    return text if step.get("enforced", True) else f"{text} (monitor mode, not enforced)"


def _status(reply: dict[str, Any]) -> str:
    now = reply["now"]
    ready = "ready" if reply["ready"] else "NOT READY (indicators not loaded yet)"
    lines = [f"misp-dns {reply['version']}, up {_span(reply['uptime'])}, {ready}", "policies:"]
    for policy in reply["policies"]:
        lines.extend(_policy_lines(policy, now))
    export = reply["export"]
    lines.append(
        f"export: {export['queued']:,} queued, {export['dropped']:,} dropped by a full queue"
    )
    for sink in export["sinks"]:
        lines.append(f"  {sink['name']}: {sink['dropped']:,} dropped")
    cache = reply["cache"]
    lines.append(
        f"cache: {cache['entries']:,} of {cache['maxEntries']:,} entries,"
        f" {cache['hits']:,} hits, {cache['misses']:,} misses"
    )
    lines.append(f"queries: {reply['queries']:,} answered")
    return "\n".join(lines)


def _zone_lines(head: str, policy: dict[str, Any], now: float) -> list[str]:
    """An RPZ secondary: the zone, the serial served, its triggers, and how updates go."""
    mode = "" if policy["enforced"] else ", monitor mode"
    where = f"{policy['zone']} from {policy['from']}{mode}"
    if policy["serial"] is None:
        lines = [f"{head} ({where}): no copy of the zone yet"]
    else:
        lines = [f"{head} ({where}): serial {policy['serial']}, {policy['triggers']:,} triggers"]
    skipped = policy["notApplied"]
    if skipped:
        parts = ", ".join(f"{count:,} {kind}" for kind, count in sorted(skipped.items()))
        lines.append(f"    not applied: {parts}")
    last = policy["lastRefresh"]
    if last is not None:
        lines.append(f"    checked {_when(last)} ({_span(now - last)} ago)")
    if policy["lastError"]:
        lines.append(
            f"    last update FAILED ({policy['failuresInARow']} in a row): {policy['lastError']}"
        )
    return lines


def _policy_lines(policy: dict[str, Any], now: float) -> list[str]:
    head = f"  {policy['policy']} {policy['policyType']}"
    if "zone" in policy:
        return _zone_lines(head, policy, now)
    if "indicators" not in policy:
        return [f"{head}: {'ready' if policy['ready'] else 'not ready'}"]
    mode = "" if policy["enforced"] else ", monitor mode"
    lines = [f"{head} ({policy['source']}{mode}): {policy['indicators']:,} indicators"]
    last = policy["lastRefresh"]
    if last is None:
        lines.append("    no good refresh since start")
    else:
        took = policy["lastRefreshDuration"]
        lines.append(
            f"    refreshed {_when(last)} ({_span(now - last)} ago"
            + (f", took {took:.1f} s)" if took is not None and not policy["lastError"] else ")")
        )
    if policy["lastError"]:
        lines.append(
            f"    last refresh FAILED ({policy['failuresInARow']} in a row): {policy['lastError']}"
        )
    if policy["nextRefresh"] is not None:
        lines.append(f"    next refresh in {_span(policy['nextRefresh'] - now)}")
    sightings = policy.get("sightings")
    if sightings is not None:
        lines.append(
            f"    sightings to MISP: {sightings['sent']:,} sent, {sightings['failed']:,} failed,"
            f" {sightings['dropped']:,} dropped, {sightings['pending']:,} waiting"
        )
    return lines


def _refreshed(reply: dict[str, Any]) -> str:
    lines = []
    for outcome in reply["refreshed"]:
        head = f"{outcome['policy']} {outcome['policyType']} ({outcome['source']})"
        if outcome["ok"]:
            took = outcome["duration"]
            lines.append(
                f"{head}: {outcome['indicators']:,} indicators"
                + (f", in {took:.1f} s" if took is not None else "")
            )
        else:
            lines.append(
                f"{head}: FAILED: {outcome['error']};"
                f" still serving the {outcome['indicators']:,} indicators it had"
            )
    return "\n".join(lines)


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _span(seconds: float) -> str:
    """3 s, 4 min 05 s, 2 h 03 min, 3 d 04 h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


if __name__ == "__main__":
    sys.exit(main())
