"""A hostile guest cannot forge log lines or fields: it binds an interface whose name
holds a newline and fake ``key=value`` fields, through a real host half in front of
real weston, and every line the host half writes still parses to the fields it meant.
Audit events go to ``--audit-log FILE``: routine ones at info, denials at warning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wlproxy.core import wire
from wlproxy.logs import escape, quote
from wlproxy.tools.weston import Weston, weston_available

from policy_helpers import PolicyHost
from test_policy_hostile import Client, _peer, msg

FORGED = "wl_compositor\nevent=forged vm=other FAKE"
_TOKEN = re.compile(r'[^\s"]*"(?:[^"\\]|\\.)*"|\S+')
_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} (debug|info|warning|error|critical) +[\w.]+: ")


def fields(line: str) -> tuple[str, dict[str, str]]:
    """A text log line as (message, fields), read the way a logfmt parser would."""
    m = _LINE.match(line)
    assert m, f"not a log line: {line!r}"
    tokens = _TOKEN.findall(line[m.end():])
    out: dict[str, str] = {}
    for t in tokens[1:]:
        k, sep, v = t.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z0-9_.-]+", k), f"not a field: {t!r} in {line!r}"
        out[k] = v
    return m.group(1), out


@pytest.fixture(scope="module")
def weston(tmp_path_factory: pytest.TempPathFactory):
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    w = Weston(width=320, height=240, debug=False, log_path=tmp_path_factory.mktemp("w") / "weston.log").start()
    yield w
    w.stop()


def test_forged_interface_name_stays_inside_its_field(weston: Weston, tmp_path: Path) -> None:
    audit_log = tmp_path / "audit.log"
    host = PolicyHost(weston.env(), tmp_path / "run", "victim", None, log_format="text")
    host.extra += ["--audit-log", str(audit_log)]
    host.start()
    try:
        c = Client(_peer(host), 1)
        name = c.names["wl_compositor"][0]
        c.send(msg(2, "wl_registry", "bind", name, wire.Untyped((FORGED, 1, c.new()))))
        _, _, text = c.error()
        assert FORGED in text  # refused, quoting the name back to the guest
    finally:
        host.stop()
    stderr_lines = host.log_text().splitlines()
    audit_lines = audit_log.read_text().splitlines()
    assert (audit_log.stat().st_mode & 0o777) == 0o600
    warned = [ln for ln in stderr_lines if "FAKE" in ln]
    assert len(warned) == 1, stderr_lines
    assert "\\nevent=forged vm=other FAKE" in warned[0]  # kept, escaped, inside the quoted message
    for ln in stderr_lines + audit_lines:
        assert "\r" not in ln and not ln.startswith("event=")
        _, f = fields(ln)
        assert f.get("event") in (None, "protocol_violation", "bind_denied", "policy_loaded"), ln
        assert f.get("vm") in (None, "victim"), ln
    # audit events went to the file, not to stderr; levels: routine info, denial warning
    assert not any("wlproxy.audit" in ln for ln in stderr_lines)
    levels = {f["event"]: level for level, f in map(fields, audit_lines)}
    assert levels.pop("policy_loaded") == "info"
    assert levels and set(levels.values()) == {"warning"}, levels
    denied = [f for _, f in map(fields, audit_lines) if "FAKE" in str(f)]
    assert denied and all(v.count('"') % 2 == 0 for f in denied for v in f.values())
    assert any(json.loads(v) == FORGED or FORGED in json.loads(v) for f in denied for v in f.values()
               if v.startswith('"'))


def test_escaping_covers_control_and_separator_characters() -> None:
    nasty = "a\x1b[31m\x00\u2028b\u0085\\\"c\td"
    e = escape(nasty)
    assert e.isprintable() and "\n" not in e
    assert e == 'a\\x1b[31m\\x00\\u2028b\\x85\\\\\\"c\\td'
    assert quote("plain") == "plain"
    assert quote("two words") == '"two words"' and quote("k=v") == '"k=v"' and quote("") == '""'


def test_json_format_unchanged(weston: Weston, tmp_path: Path) -> None:
    host = PolicyHost(weston.env(), tmp_path / "run", "victim", None, log_format="json").start()
    try:
        c = Client(_peer(host), 1)
        c.send(msg(2, "wl_registry", "bind", c.names["wl_compositor"][0], wire.Untyped((FORGED, 1, c.new()))))
        c.error()
    finally:
        host.stop()
    recs = [json.loads(ln) for ln in host.log_text().splitlines()]
    assert any(FORGED in r.get("error", "") for r in recs if r.get("logger") == "wlproxy.audit")
    assert {r["level"] for r in recs if r.get("event") == "policy_loaded"} == {"info"}
