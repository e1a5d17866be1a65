"""The host policy with real weston (headless) and real clients through the pair.

One weston for the module, run with ``WAYLAND_DEBUG=server`` so its stderr
records every request it receives: that is what weston saw (titles, app_ids).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pywayland")

from wlproxy.core import bridges, policy  # noqa: E402
from wlproxy.tools.weston import Weston, weston_available  # noqa: E402

from policy_helpers import CLIENTS, PolicyHost, audit_events, policy_pair  # noqa: E402


@pytest.fixture(scope="module")
def weston(tmp_path_factory: pytest.TempPathFactory):
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    w = Weston(width=640, height=480, debug=True, extra_env={"WAYLAND_DEBUG": "server"},
               log_path=tmp_path_factory.mktemp("weston") / "weston.log").start()
    yield w
    w.stop()


def _globals(text: str) -> dict[str, tuple[int, int]]:
    """interface -> (version, name) from wayland-info's output."""
    return {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"interface: '(\w+)',\s+version:\s+(\d+),\s+name:\s+(\d+)", text)}


def _wayland_info(env) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["wayland-info"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return _globals(out.stdout)


def _client(mode: str, *args: str, env, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CLIENTS, mode, *args], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, **kw)


def _line(p: subprocess.Popen, want: str, timeout: float = 10) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"client ended before {want!r}: {p.stderr.read()}")
        if line.startswith(want):
            return line
    raise AssertionError(f"no {want!r} in time")


CAPPED = """
[globals]
deny = ["wp_presentation"]
[globals.allow]
wl_compositor = 3
wl_output = 2
zxdg_output_manager_v1 = 1
zwp_input_timestamps_manager_v1 = 1
"""


def test_wayland_info_lists_exactly_the_allowed_globals_at_capped_versions(weston: Weston, tmp_path: Path) -> None:
    direct = {k: v for k, (v, _) in _wayland_info(weston.env()).items()}
    pol = policy.parse(CAPPED, "capvm")
    with policy_pair(weston.env(), tmp_path, "capvm", CAPPED) as pair:
        proxied = {k: v for k, (v, _) in _wayland_info(pair.env()).items()}
    expected = {k: min(v, pol.globals[k]) for k, v in direct.items() if k in pol.globals}
    assert proxied == expected
    # the caps bite: weston offers more than the policy allows
    assert direct["wl_compositor"] > 3 and proxied["wl_compositor"] == 3
    assert direct["wl_output"] > 2 and proxied["wl_output"] == 2
    assert "wp_presentation" in direct and "wp_presentation" not in proxied  # denied
    assert proxied["zwp_input_timestamps_manager_v1"] == 1  # allowed beyond the defaults
    assert "zwp_input_timestamps_manager_v1" not in policy.DEFAULT_GLOBALS


def _everything_allowed() -> str:
    """A policy allowing every interface validation lets through."""
    from wlproxy.core.protocol import load

    proto = load()
    lines = ["[globals.allow]"]
    for i in proto.interfaces:
        if not policy.forbidden(i.name) and bridges.bridgeable(i.name, proto):
            lines.append(f"{i.name} = {i.version}")
    text = "\n".join(lines) + "\n"
    policy.parse(text, "allvm")  # valid
    return text


@pytest.mark.parametrize("which", ["default", "everything-allowed"])
def test_weston_private_globals_never_visible(weston: Weston, tmp_path: Path, which: str) -> None:
    direct = _wayland_info(weston.env())
    assert "weston_screenshooter" in direct and "weston_desktop_shell" in direct  # weston offers them
    with policy_pair(weston.env(), tmp_path, "privvm", None if which == "default" else _everything_allowed()) as pair:
        proxied = _wayland_info(pair.env())
    assert proxied, "no globals at all"
    assert not [k for k in proxied if k.startswith("weston_")]
    if which == "everything-allowed":  # the permissive policy did widen the set
        assert "zwp_input_timestamps_manager_v1" in proxied


def test_bind_denied_global_by_name_errors_and_other_clients_go_on(weston: Weston, tmp_path: Path) -> None:
    name = _wayland_info(weston.env())["weston_screenshooter"][1]
    with policy_pair(weston.env(), tmp_path, "bindvm", "[globals.allow]\nwl_output = 2\n") as pair:
        env = pair.env()
        other = _client("title", "--title", "survivor", env=env)
        try:
            _line(other, "mapped")
            bad = subprocess.run([sys.executable, CLIENTS, "bind", "--name", str(name), "--interface",
                                  "weston_screenshooter"], env=env, capture_output=True, text=True, timeout=20)
            assert bad.returncode != 0 and "bound" not in bad.stdout
            assert "error 0: invalid global weston_screenshooter" in bad.stderr, bad.stderr
            # a bind by a name weston never had, and above a cap, fail the same way
            unknown = subprocess.run([sys.executable, CLIENTS, "bind", "--name", "4242", "--interface",
                                      "wl_compositor"], env=env, capture_output=True, text=True, timeout=20)
            assert unknown.returncode != 0 and "invalid global wl_compositor (4242)" in unknown.stderr
            out_name = _wayland_info(env)["wl_output"][1]
            above = subprocess.run([sys.executable, CLIENTS, "bind", "--name", str(out_name), "--interface",
                                    "wl_output", "--version", "3"], env=env, capture_output=True, text=True,
                                   timeout=20)
            assert above.returncode != 0 and "invalid version for global wl_output" in above.stderr, above.stderr
            # the VM's other client is unaffected
            other.stdin.write("still here\n")
            _line(other, "title")
            assert other.poll() is None
        finally:
            other.stdin.close()
            other.wait(10)
        events = pair.host.audit("bind_denied")
    assert [(e["vm"], e["interface"], e["reason"]) for e in events] == [
        ("bindvm", "weston_screenshooter", "hidden by policy"), ("bindvm", "wl_compositor", "unknown name"),
        ("bindvm", "wl_output", "version above cap")]


def _weston_saw(weston: Weston, request: str) -> list[str]:
    """Arguments of every ``<request>(...)`` weston received (WAYLAND_DEBUG=server)."""
    text = Path(weston.log_path + ".stderr").read_text(errors="replace")
    return re.findall(r"\.%s\((.*)\)\s*$" % re.escape(request), text, re.M)


def test_titles_and_app_ids_seen_by_weston_carry_the_vm(weston: Weston, tmp_path: Path) -> None:
    with policy_pair(weston.env(), tmp_path, "titlevm", 'tag = "work"\n') as pair:
        c = _client("title", "--title", "hello-1", "--app-id", "org.example.Editor", env=pair.env())
        try:
            _line(c, "mapped")
            for t in ("renamed-2", "[host] fake-3", "bidi\u202e-4\u202c\x1b[31m"):
                c.stdin.write(t + "\n")
                _line(c, "title")
        finally:
            c.stdin.close()
            c.wait(10)
    titles = [t for t in _weston_saw(weston, "set_title") if "work" in t or "-1" in t or "-2" in t or "-3" in t]
    # the initial tag, then every title the guest set, each with the prefix
    assert titles[:5] == ['"[work]"', '"[work] hello-1"', '"[work] renamed-2"', '"[work] [host] fake-3"',
                          '"[work] bidi-4[31m"'], titles
    assert not [t for t in _weston_saw(weston, "set_title") if t.startswith('"hello-1') or t.startswith('"renamed')]
    app_ids = [a for a in _weston_saw(weston, "set_app_id") if "work" in a or "Editor" in a]
    assert app_ids[:2] == ['"work"', '"work.org.example.Editor"'], app_ids


def test_text_log_format_and_security_context_switch(weston: Weston, tmp_path: Path) -> None:
    pol = tmp_path / "sc.toml"
    pol.write_text('security_context = "require"\n')
    out = subprocess.run([sys.executable, "-m", "wlproxy", "host", "--listen", str(tmp_path / "s"), "--vm", "scvm",
                          "--policy", str(pol)], env=_src_env(weston.env()), capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 2
    assert "requires a security context: the compositor does not offer wp_security_context_manager_v1" in out.stderr
    assert "security_context_unavailable vm=scvm mode=require" in out.stderr  # a text audit line
    pol.write_text('security_context = "prefer"\n')
    h = PolicyHost(weston.env(), tmp_path / "run", "scvm", pol).start()
    try:
        assert h.proc.poll() is None
        time.sleep(0.2)
        ev = h.audit("security_context_unavailable")
        assert ev and ev[0]["mode"] == "prefer" and ev[0]["vm"] == "scvm"
        loaded = h.audit("policy_loaded")[0]
        assert loaded["source"] == str(pol) and loaded["security_context"] == "prefer"
    finally:
        h.stop()


def _src_env(env):
    from policy_helpers import ROOT

    out = dict(env)
    out["PYTHONPATH"] = str(ROOT)
    return out


def test_audit_lines_are_json_with_the_vm(weston: Weston, tmp_path: Path) -> None:
    with policy_pair(weston.env(), tmp_path, "jsonvm", None) as pair:
        subprocess.run([sys.executable, CLIENTS, "bind", "--name", "4242", "--interface", "wl_compositor"],
                       env=pair.env(), capture_output=True, text=True, timeout=20)
        text = pair.host.log_text()
    events = audit_events(text)
    assert {e["event"] for e in events} >= {"policy_loaded", "bind_denied"}
    assert all(e["vm"] == "jsonvm" for e in events)
    # routine events at info, denials at warning
    assert all(e["level"] == ("info" if e["event"] == "policy_loaded" else "warning") for e in events)
