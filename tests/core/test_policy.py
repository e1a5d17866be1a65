"""Policy files: validation with file, line and key; XDG lookup; the CLI; the
host half's decisions that need no compositor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wlproxy.core import policy
from wlproxy.halves.host import clean_app_id, clean_title

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "wlproxy", "policy", *args], env=e, capture_output=True,
                          text=True, timeout=30)


def test_defaults() -> None:
    p = policy.default("work")
    assert p.tag == "work" and p.clipboard == "both" and p.security_context == "off"
    assert p.global_cap("wl_seat") == 8 and p.global_cap("xdg_wm_base") == 5
    for never in ("weston_screenshooter", "weston_desktop_shell", "zwlr_screencopy_manager_v1",
                  "zwlr_data_control_manager_v1", "zwp_virtual_keyboard_manager_v1", "zwlr_layer_shell_v1",
                  "ext_session_lock_manager_v1", "zwp_input_method_v1", "zwp_linux_dmabuf_v1",
                  "wp_security_context_manager_v1", "some_unknown_v9"):
        assert p.global_cap(never) is None, never
    assert set(policy.DEFAULT_GLOBALS).isdisjoint(policy.UNSAFE_GLOBALS)


def test_a_full_policy() -> None:
    p = policy.parse("""
tag = "work"
clipboard = "to-host"
security_context = "prefer"
[globals]
deny = ["wp_presentation"]
allow = { zwp_idle_inhibit_manager_v1 = 1, wl_seat = 5 }
[limits]
clients = 16
shm_bytes_per_client = "256 MiB"
shm_bytes_per_vm = "1G"
pending_link_bytes = 1048576
""", "vm1", "x.toml")
    assert (p.tag, p.clipboard, p.security_context) == ("work", "to-host", "prefer")
    assert p.guest_to_host and not p.host_to_guest
    assert p.global_cap("wl_seat") == 5 and p.global_cap("zwp_idle_inhibit_manager_v1") == 1
    assert p.global_cap("wp_presentation") is None and p.global_cap("wl_compositor") == 5
    assert p.limits.clients == 16 and p.limits.shm_bytes_per_client == 256 << 20
    assert p.limits.shm_bytes_per_vm == 1 << 30 and p.limits.pending_link_bytes == 1 << 20
    assert p.limits.objects_per_client == policy.Limits().objects_per_client  # default kept
    none = policy.parse('[globals]\nbaseline = "none"\nallow = { wl_shm = 1 }\n', "vm1")
    assert dict(none.globals) == {"wl_shm": 1}


@pytest.mark.parametrize("text, line, key, problem", [
    ('clipbard = "none"\n', 1, "clipbard", "unknown key"),
    ('tag = "a"\n\nclipboard = "sometimes"\n', 3, "clipboard", "must be one of"),
    ('security_context = true\n', 1, "security_context", "must be one of"),
    ('tag = "../etc"\n', 1, "tag", "not a valid tag"),
    ('# c\n[limits]\n# c\nclients = 0\n', 4, "limits.clients", "out of range"),
    ('[limits]\nclients = "many"\n', 2, "limits.clients", "must be an integer"),
    ('[limits]\nclients = 1.5\n', 2, "limits.clients", "must be an integer"),
    ('[limits]\nshm_bytes_per_vm = "12 parsecs"\n', 2, "limits.shm_bytes_per_vm", "bad size"),
    ('[limits]\nmax_keymap = 5\n', 2, "limits.max_keymap", "unknown key"),
    ('[limits]\nshm_bytes_per_client = "3G"\n', 2, "limits.shm_bytes_per_client", "larger than shm_bytes_per_vm"),
    ('[limitz]\nclients = 1\n', 1, "limitz", "unknown key"),
    ('[globals]\nbaseline = "all"\n', 2, "globals.baseline", "must be one of"),
    ('[globals]\nallow = { wl_seat = 9 }\n', 2, "globals.allow.wl_seat", "out of range (1 to 8)"),
    ('[globals]\nallow = { wl_seat = true }\n', 2, "globals.allow.wl_seat", "must be an integer"),
    ('[globals.allow]\nweston_screenshooter = 1\n', 2, "globals.allow.weston_screenshooter", "never offered"),
    ('[globals.allow]\nwp_security_context_manager_v1 = 1\n', 2,
     "globals.allow.wp_security_context_manager_v1", "never offered"),
    ('\n[globals.allow]\n\nzwp_linux_dmabuf_v1 = 3\n', 4, "globals.allow.zwp_linux_dmabuf_v1", "file descriptors"),
    ('[globals.allow]\nzwlr_layer_shell_v1 = 1\n', 2, "globals.allow.zwlr_layer_shell_v1", "not known to wlproxy"),
    ('[globals]\ndeny = "wl_seat"\n', 2, "globals.deny", "must be an array"),
    ('[globals]\ndeny = ["wl seat"]\n', 2, "globals.deny", "not a Wayland interface name"),
    ('[globals]\nallow = { wl_seat = 1 }\ndeny = ["wl_seat"]\n', 3, "globals.deny", "both allowed and denied"),
    ('[globals]\nthing = 1\n', 2, "globals.thing", "unknown key"),
    ('globals.thing = 1\n', 1, "globals.thing", "unknown key"),
    ('globals = 3\n', 1, "globals", "must be a table"),
])
def test_validation_names_file_line_and_key(text: str, line: int, key: str, problem: str) -> None:
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "vm1", "/etc/xdg/wlproxy/vms/vm1.toml")
    msg = str(e.value)
    assert msg.startswith(f"/etc/xdg/wlproxy/vms/vm1.toml:{line}: key '{key}': "), msg
    assert problem in msg


def test_invalid_toml_reports_the_parser_position() -> None:
    with pytest.raises(policy.PolicyError, match=r"^f.toml: invalid TOML: .*line 2"):
        policy.parse('tag = "a"\nclipboard = \n', "vm1", "f.toml")


def test_key_line_scanner() -> None:
    text = '# tag = "no"\ntag = "x"  # [limits]\n[globals . allow]\n"wl_seat" = 3\n[limits]\nclients=2\n'
    assert policy.key_line(text, ("tag",)) == 2
    assert policy.key_line(text, ("globals", "allow", "wl_seat")) == 4
    assert policy.key_line(text, ("limits", "clients")) == 6
    assert policy.key_line(text, ("limits", "nothing")) == 5  # falls back to its table


def test_cli_check(tmp_path: Path) -> None:
    good = tmp_path / "work.toml"
    good.write_text('clipboard = "none"\n[globals.allow]\nzwp_keyboard_shortcuts_inhibit_manager_v1 = 1\n')
    r = _cli("check", str(good))
    assert r.returncode == 0 and "OK (VM 'work'" in r.stdout
    assert "warning: zwp_keyboard_shortcuts_inhibit_manager_v1 is allowed" in r.stdout  # an unsafe one
    bad = tmp_path / "bad.toml"
    bad.write_text('\n[limits]\nobjects_per_client = -1\n')
    r = _cli("check", str(bad))
    assert r.returncode == 2
    assert f"error: {bad}:3: key 'limits.objects_per_client': -1 is out of range" in r.stderr
    r = _cli("check", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read the policy" in r.stderr


def test_cli_show_lookup_order_and_override(tmp_path: Path) -> None:
    home, sysdir = tmp_path / "home", tmp_path / "sys"
    for d, clip in ((home, "to-host"), (sysdir, "none")):
        (d / "wlproxy" / "vms").mkdir(parents=True)
        (d / "wlproxy" / "vms" / "work.toml").write_text(f'clipboard = "{clip}"\n')
    (sysdir / "wlproxy" / "vms" / "other.toml").write_text('clipboard = "from-host"\n')
    env = dict(os.environ, XDG_CONFIG_HOME=str(home), XDG_CONFIG_DIRS=str(sysdir))

    def show(*a: str) -> dict:
        r = _cli("show", *a, "--json", env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert show("work")["clipboard"] == "to-host"  # $XDG_CONFIG_HOME first
    assert show("other")["source"] == str(sysdir / "wlproxy" / "vms" / "other.toml")  # then the config dirs
    nothing = show("nothing")
    assert nothing["source"] is None and nothing["clipboard"] == "both"  # defaults
    assert nothing["limits"]["clients"] == 64 and nothing["globals"]["wl_compositor"] == 5
    override = tmp_path / "o.toml"
    override.write_text('tag = "other-tag"\n')
    assert show("work", "--policy", str(override))["tag"] == "other-tag"
    r = _cli("show", "../../etc/passwd", env=env)
    assert r.returncode == 2 and "not valid" in r.stderr
    (home / "wlproxy" / "vms" / "broken.toml").write_text("[limits]\nclients = 0\n")
    r = _cli("show", "broken", env=env)
    assert r.returncode == 2 and "broken.toml:2: key 'limits.clients'" in r.stderr


def test_show_prints_a_valid_policy_with_every_default(tmp_path: Path) -> None:
    r = _cli("show", "work", "--policy", os.devnull)
    assert r.returncode == 0, r.stderr
    for k in policy.Limits.CONFIGURABLE:
        assert f"\n{k} = " in r.stdout
    f = tmp_path / "work.toml"
    f.write_text(r.stdout)
    again = policy.load_file(f, "work")  # what show prints is a policy file giving the same policy
    assert again.summary() | {"source": None} == policy.default("work").summary() | {"source": None}


def test_title_and_app_id_cleaning() -> None:
    assert clean_title("a\u202eb\u2066c\x1b[0m\nd\u2028e") == "abc[0mde"
    assert clean_title("é" * 600, 1024) == "é" * 512
    assert len(clean_title("é" * 600, 1023).encode()) == 1022  # never half a character
    assert clean_title("x\udcff") == "x\ufffd"  # invalid UTF-8 from the guest
    assert clean_title(None) == ""
    assert clean_app_id("org.example.App") == "org.example.App"
    assert clean_app_id("../evil app\u202e") == ".._evil_app"


def test_forbidden_globals_stay_hidden_whatever_the_policy_object_says() -> None:
    import dataclasses

    from wlproxy.halves.host import HostServer

    p = dataclasses.replace(policy.default("vm1"), globals={"weston_screenshooter": 1, "wl_seat": 99,
                                                             "zwp_linux_dmabuf_v1": 4, "nonexistent_v1": 1})
    srv = HostServer.__new__(HostServer)  # only its policy decisions, no sockets
    srv.policy, srv._caps = p, {}
    assert srv.global_cap("weston_screenshooter") is None   # forbidden
    assert srv.global_cap("zwp_linux_dmabuf_v1") is None    # carries fds
    assert srv.global_cap("nonexistent_v1") is None         # no XML
    assert srv.global_cap("wl_seat") == 8                    # never above what wlproxy can parse
