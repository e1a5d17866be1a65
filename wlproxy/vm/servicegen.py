"""Write the s6 service directories and systemd units in ``wlproxy/vm/services/``, filled in.

Templates hold ``@KEY@`` placeholders; values are quoted for the file's language (sh or
systemd). s6 gets one ``wlproxy-host-NAME`` directory per VM (started down) and ``weston``;
systemd gets ``wlproxy-host@.service`` and ``weston.service``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("hostvm.servicegen")

TEMPLATES = Path(__file__).parent / "services"
DEFAULT_DISPLAY = "wayland-1"  # Spectrum's weston socket
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


@dataclass(frozen=True)
class ServiceParams:
    """The values the templates are filled with."""

    vms_dir: Path
    run_dir: Path
    port: int = 6000
    display: str = DEFAULT_DISPLAY
    weston_args: str = ""
    user: str = ""          # s6: the user the host half runs as (s6-setuidgid); "": the service's user
    socket_group: str = ""  # systemd: the group that may reach weston's socket (SupplementaryGroups=)
    python: str = field(default_factory=lambda: sys.executable)
    xdg_runtime_dir: str = field(
        default_factory=lambda: os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
    pythonpath: str | None = field(default_factory=lambda: os.environ.get("PYTHONPATH"))
    weston: str = field(default_factory=lambda: shutil.which("weston") or "/usr/bin/weston")


def systemd_quote(word: str) -> str:
    """Quote one word for an ``Exec*=`` or ``Environment=`` line."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r'[\s"\'\\;]', word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_dir_lines(run_dir: Path) -> str:
    """systemd: RUN_DIR/%i owned by the transient user (RuntimeDirectory=, kept across restarts, since
    the VMM's sockets live there too) when RUN_DIR is under /run; else RUN_DIR must be writable for it."""
    d = Path(run_dir).absolute()
    if d.parts[:2] == ("/", "run") and len(d.parts) > 2:
        rel = systemd_quote("/".join(d.parts[2:]) + "/%i").replace("%%i", "%i")
        return f"RuntimeDirectory={rel}\nRuntimeDirectoryPreserve=yes\nRuntimeDirectoryMode=0750"
    return f"# {d} is not under /run: it must be writable by the service's user\nReadWritePaths={systemd_quote(str(d))}"


def _values(p: ServiceParams, quote: Callable[[str], str]) -> dict[str, str]:
    display_args = f"--display {quote(p.display)}" if p.display else ""
    return {
        "PYTHON": quote(p.python), "VMS_DIR": quote(str(Path(p.vms_dir).absolute())),
        "RUN_DIR": quote(str(Path(p.run_dir).absolute())), "PORT": str(int(p.port)),
        "DISPLAY": quote(p.display or DEFAULT_DISPLAY), "DISPLAY_ARGS": display_args,
        "XDG_RUNTIME_DIR": quote(p.xdg_runtime_dir), "WESTON": quote(p.weston),
        "WESTON_ARGS": " ".join(quote(a) for a in shlex.split(p.weston_args)),
        "PYTHONPATH_EXPORT": f"export PYTHONPATH={quote(p.pythonpath)}" if p.pythonpath else "",
        "PYTHONPATH_ENV": f"Environment=PYTHONPATH={quote(p.pythonpath)}" if p.pythonpath else "",
        "RUN_DIR_LINES": _run_dir_lines(p.run_dir),
        "GROUP_LINE": f"SupplementaryGroups={quote(p.socket_group)}" if p.socket_group else "",
        "SETUIDGID": f"s6-setuidgid {quote(p.user)}" if p.user else "",
        "CHOWN_RUN_DIR": (f"chown {quote(p.user)} {quote(str(Path(p.run_dir).absolute()))}/\"$vm\"" if p.user
                          else ":"),
    }


def render(text: str, values: dict[str, str]) -> str:
    """Fill ``@KEY@`` placeholders; an unknown key is an error. Lines left empty by it are dropped."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder @{m.group(1)}@ has no value")
        return values[m.group(1)]
    out = []
    for line in text.splitlines():
        filled = _PLACEHOLDER.sub(sub, line)
        if filled.strip() or not line.strip():
            out.append(filled.rstrip())
    return "\n".join(out) + "\n"


def _write(src: Path, dest: Path, values: dict[str, str]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(render(src.read_text(), values) if src.stat().st_size else "")
    tmp.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    os.replace(tmp, dest)


def _copy_dir(src: Path, dest: Path, values: dict[str, str]) -> list[Path]:
    written = []
    for f in sorted(src.iterdir()):
        if f.is_file():
            _write(f, dest / f.name, values)
            written.append(dest / f.name)
    return written


def write_s6(dest: Path, params: ServiceParams, vm_names: list[str]) -> list[Path]:
    """``DEST/weston`` and ``DEST/wlproxy-host-NAME`` for each VM; returns the files written."""
    values = _values(params, shlex.quote)
    written = _copy_dir(TEMPLATES / "s6" / "weston", dest / "weston", values)
    for name in vm_names:
        written += _copy_dir(TEMPLATES / "s6" / "wlproxy-host", dest / f"wlproxy-host-{name}", values)
    log.info("wrote %d s6 files under %s", len(written), dest)
    return written


def write_systemd(dest: Path, params: ServiceParams) -> list[Path]:
    """``DEST/wlproxy-host@.service`` and ``DEST/weston.service``."""
    return _copy_dir(TEMPLATES / "systemd", dest, _values(params, systemd_quote))
