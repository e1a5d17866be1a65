"""Command-line conventions: generated man pages and completion are current, logging options
work after the subcommand, a closed stdout ends quietly, the guest half takes its socket name
from $WAYLAND_DISPLAY."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wlproxy.halves.guest import socket_name
from wlproxy.tools import manpage

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_checked_in_man_pages_and_completions_are_current() -> None:
    for rel, text in manpage.generate().items():
        assert (manpage.SHARE / rel).read_text() == text, f"run: python -m wlproxy.tools.manpage ({rel})"


def test_man_pages_cover_the_parsers_and_schema() -> None:
    m1, m5 = manpage.man1(), manpage.man5()
    for word in ("wlproxy vm list", "\\-\\-allow\\-root", "\\-\\-audit\\-log", "EXIT STATUS", "141"):
        assert word in m1, word
    for word in ("shm_bytes_per_client", "wlproxy.toml", "XDG_CONFIG_DIRS", "clipboard"):
        assert word in m5, word
    if subprocess.run(["sh", "-c", "command -v man"], capture_output=True).returncode == 0:
        r = subprocess.run(["man", "-l", str(manpage.SHARE / "man" / "wlproxy.1")], capture_output=True,
                           text=True, env=dict(ENV, MANWIDTH="80", MAN_KEEP_FORMATTING="0"))
        text = re.sub(".\b", "", r.stdout)  # overstrike bold and underline
        assert r.returncode == 0 and "wlproxy vm start" in text and "EXIT STATUS" in text


def test_bash_completion_completes_subcommands_and_options() -> None:
    script = manpage.SHARE / "completions" / "wlproxy"
    out = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=(wlproxy vm l); COMP_CWORD=2; _wlproxy; '
                          'echo "${COMPREPLY[@]}"; COMP_WORDS=(wlproxy host --al); COMP_CWORD=2; _wlproxy; '
                          'echo "${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["list", "--allow-root"], out.stdout + out.stderr


def test_log_options_after_the_subcommand() -> None:
    code = ("import logging, sys; from wlproxy.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, logging.getLogger().level, type(logging.getLogger().handlers[0].formatter).__name__)")
    r = subprocess.run([sys.executable, "-c", code, "policy", "show", "x", "-vv", "--log-format", "json"],
                       capture_output=True, text=True, env=ENV, timeout=30)
    assert r.stdout.splitlines()[-1] == "0 10 JsonFormatter", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", code, "-v", "policy", "show", "x"], capture_output=True, text=True,
                       env=ENV, timeout=30)
    assert r.stdout.splitlines()[-1] == "0 20 TextFormatter"


def test_closed_stdout_exits_quietly() -> None:
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # nobody will ever read: the first write fails with EPIPE
    proc = subprocess.Popen([sys.executable, "-m", "wlproxy", "policy", "show", "x"], stdout=w_fd,
                            stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    os.close(w_fd)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 141 and err == b"", err.decode()


@pytest.mark.parametrize("given,env,want", [(None, "wl-app", "wl-app"), ("mine", "wl-app", "mine"),
                                            (None, None, "wayland-0")])
def test_guest_socket_follows_wayland_display(given: str | None, env: str | None, want: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if env is None:
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    else:
        monkeypatch.setenv("WAYLAND_DISPLAY", env)
    assert socket_name(given) == want
