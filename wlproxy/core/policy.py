"""Per-VM policy: which globals a VM sees, its identity, clipboard and limits.

Where a VM's policy is found is :data:`LOOKUP_DOC` (the one place it is
described; ``wlproxy policy --help`` and wlproxy-policy(5) print it).

Everything is validated on load: an unknown key or a bad value is refused
with a message naming the file, the line and the key.  Example: :data:`EXAMPLE`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

LOOKUP_DOC = """\
The policy of VM NAME is the first file found, looking in each VMs directory in turn:
DIR/NAME/wlproxy.toml (beside the VM's definition), then DIR/NAME.toml.  Having both
in one directory is an error.

The VMs directories are --vms-dir DIR when given (wlproxy vm, wlproxy policy show),
else wlproxy/vms under each XDG config directory: $XDG_CONFIG_HOME (default
~/.config), then each of $XDG_CONFIG_DIRS (default /etc/xdg).  --policy FILE
(wlproxy host, wlproxy policy show) uses that file instead.  No file: the built-in
defaults.
"""

EXAMPLE = """\
tag = "work"                 # window title prefix "[work] ", app_id "work.<app_id>"
clipboard = "to-host"        # both | to-host | from-host | none
security_context = "off"     # off | prefer | require

[globals]
baseline = "default"         # "default" (the safe set) or "none"
deny = ["wp_presentation"]
allow = { zwp_idle_inhibit_manager_v1 = 1, wl_seat = 5 }

[limits]
clients = 16
shm_bytes_per_client = "256 MiB"   # MiB = 2^20 bytes; MB = 10^6 bytes
messages_per_second = 20000
"""

# -- the globals baseline ---------------------------------------------------------

# What ordinary apps need, each capped at a fixed version (a baseline: a newer
# compositor offering more never changes what a guest sees).
DEFAULT_GLOBALS: dict[str, int] = {
    "wl_compositor": 5,
    "wl_subcompositor": 1,
    "wl_shm": 1,
    "xdg_wm_base": 5,
    "wl_seat": 8,
    "wl_output": 4,
    "wl_data_device_manager": 3,
    "zxdg_output_manager_v1": 3,
    "wp_viewporter": 1,
    "wp_presentation": 1,
    "zxdg_decoration_manager_v1": 1,
    "wp_fractional_scale_manager_v1": 1,
    "wp_cursor_shape_manager_v1": 1,  # no XML in this build: stays hidden until there is
    "zwp_pointer_constraints_v1": 1,
    "zwp_relative_pointer_manager_v1": 1,
    "zwp_primary_selection_device_manager_v1": 1,
    "zwp_text_input_manager_v3": 1,
}

# Never offered by default; a policy may allow the ones wlproxy can parse,
# and the host half logs a warning when it does.
UNSAFE_GLOBALS: frozenset[str] = frozenset({
    # screen capture
    "zwlr_screencopy_manager_v1", "ext_image_copy_capture_manager_v1",
    "ext_output_image_capture_source_manager_v1", "ext_foreign_toplevel_image_capture_source_manager_v1",
    "zwlr_export_dmabuf_manager_v1", "hyprland_toplevel_export_manager_v1",
    # dmabuf (export and import: fds the link cannot carry)
    "zwp_linux_dmabuf_v1", "wp_drm_lease_device_v1",
    # clipboard managers
    "zwlr_data_control_manager_v1", "ext_data_control_manager_v1",
    # synthetic input
    "zwp_virtual_keyboard_manager_v1", "zwlr_virtual_pointer_manager_v1",
    "zwp_input_method_v1", "zwp_input_panel_v1", "zwp_input_method_manager_v2",
    # shell surfaces above everything, locking, window lists
    "zwlr_layer_shell_v1", "ext_session_lock_manager_v1",
    "zwlr_foreign_toplevel_manager_v1", "ext_foreign_toplevel_list_v1",
    "zwlr_output_manager_v1", "zwlr_gamma_control_manager_v1",
    "zwp_xwayland_keyboard_grab_manager_v1", "zwp_keyboard_shortcuts_inhibit_manager_v1",
    "xwayland_shell_v1",
})

# Never offered, whatever the policy says: the compositor's private interfaces
# and the security-context manager (a guest must not mint sandbox identities).
FORBIDDEN_PREFIXES = ("weston_",)
FORBIDDEN_GLOBALS: frozenset[str] = frozenset({
    "text_cursor_position", "wp_security_context_manager_v1", "ivi_application",
    "zwp_fullscreen_shell_v1",
})

KNOWN_NAMES = frozenset(DEFAULT_GLOBALS) | UNSAFE_GLOBALS | FORBIDDEN_GLOBALS

CLIPBOARD_MODES = ("both", "to-host", "from-host", "none")
SECURITY_CONTEXT_MODES = ("off", "prefer", "require")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_IFACE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SIZE_RE = re.compile(r"\s*(\d+)\s*([KMGT]?)(i?)(B?)\s*", re.IGNORECASE)
_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``4096``, ``"64 MiB"`` (2^20 each: KiB MiB GiB TiB), ``"64 MB"``
    (10^6 each: kB MB GB TB) or ``"64M"`` (a bare letter: binary, as in ``1G``)."""
    m = _SIZE_RE.fullmatch(text)
    if not m or (m.group(3) and not (m.group(2) and m.group(4))):
        raise ValueError(f"bad size {text!r} (bytes, or e.g. \"64 MiB\" = 64*2^20, \"64 MB\" = 64*10^6)")
    n, prefix, binary, b = int(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
    base = 1024 if binary or not b else 1000
    return n * base ** _POWER[prefix]


def forbidden(iface: str) -> bool:
    return iface in FORBIDDEN_GLOBALS or iface.startswith(FORBIDDEN_PREFIXES)


def valid_vm_name(name: str) -> bool:
    """VM names become file names and tags: letters, digits, ``._-``, no leading dot."""
    return bool(_NAME_RE.fullmatch(name))


# -- the policy ---------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """Resource limits (per client, per VM); defaults are for ordinary desktop apps."""

    clients: int = 64                          # per VM: concurrent Wayland clients
    objects_per_client: int = 100_000          # live protocol objects
    objects_per_vm: int = 500_000
    shm_bytes_per_client: int = 1 << 30        # total size of the client's shm pools
    shm_bytes_per_vm: int = 2 << 30
    pending_link_bytes: int = 64 << 20         # per VM: host->guest bytes queued while the guest does not read
    messages_per_second: int = 100_000         # per client, sustained
    message_burst: int = 200_000               # per client, the token bucket's depth
    max_keymap: int = 1 << 20                  # not configurable: a keymap larger than this is dropped

    CONFIGURABLE = ("clients", "objects_per_client", "objects_per_vm", "shm_bytes_per_client",
                    "shm_bytes_per_vm", "pending_link_bytes", "messages_per_second", "message_burst")
    SIZES = ("shm_bytes_per_client", "shm_bytes_per_vm", "pending_link_bytes")
    MAXIMA = {"clients": 1024, "objects_per_client": 1 << 24, "objects_per_vm": 1 << 26,
              "shm_bytes_per_client": 1 << 40, "shm_bytes_per_vm": 1 << 42,
              "pending_link_bytes": 1 << 34, "messages_per_second": 1 << 30, "message_burst": 1 << 32}
    MINIMA = {"pending_link_bytes": 1 << 16, "shm_bytes_per_client": 4096, "shm_bytes_per_vm": 4096}


@dataclass(frozen=True)
class Policy:
    vm: str
    tag: str
    clipboard: str = "both"
    security_context: str = "off"
    baseline: str = "default"
    globals: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GLOBALS))
    limits: Limits = field(default_factory=Limits)
    source: str | None = None  # the file it came from; None: built-in defaults

    # -- decisions ---------------------------------------------------------------
    def global_cap(self, iface: str) -> int | None:
        """The highest version of ``iface`` a guest may see, or None if hidden."""
        if forbidden(iface):
            return None
        return self.globals.get(iface)

    @property
    def guest_to_host(self) -> bool:
        """May data the guest offers (its selection, its drags) reach host clients?"""
        return self.clipboard in ("both", "to-host")

    @property
    def host_to_guest(self) -> bool:
        """May host clients' clipboard data reach the guest?"""
        return self.clipboard in ("both", "from-host")

    def unsafe_allowed(self) -> list[str]:
        return sorted(set(self.globals) & UNSAFE_GLOBALS)

    # -- printing ----------------------------------------------------------------
    def to_toml(self) -> str:
        """The effective policy, every default filled in, as a policy file."""
        lines = [f"# effective wlproxy policy for VM {self.vm!r}",
                 f"# source: {self.source or 'built-in defaults (no policy file)'}",
                 f"tag = {_q(self.tag)}", f"clipboard = {_q(self.clipboard)}",
                 f"security_context = {_q(self.security_context)}", "", "[globals]",
                 f"baseline = {_q(self.baseline)}",
                 "# interface = version cap (a guest sees min(cap, what the compositor offers))"]
        lines.append("[globals.allow]")
        from wlproxy.core.protocol import load  # noqa: PLC0415 (the XML is only needed here)

        proto = load()
        for name in sorted(self.globals):
            if name in proto:
                lines.append(f"{name} = {self.globals[name]}")
            else:  # a default this build has no XML for
                lines.append(f"# {name} = {self.globals[name]}  (not known to this build: stays hidden)")
        lines += ["", "[limits]"]
        for k in Limits.CONFIGURABLE:
            v = getattr(self.limits, k)
            lines.append(f"{k} = {v}" + (f"  # {_human(v)}" if k in Limits.SIZES else ""))
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        return {"vm": self.vm, "source": self.source, "tag": self.tag, "clipboard": self.clipboard,
                "security_context": self.security_context, "globals": dict(sorted(self.globals.items())),
                "limits": {k: getattr(self.limits, k) for k in Limits.CONFIGURABLE}}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# -- loading ----------------------------------------------------------------------

class PolicyError(ValueError):
    """A policy file that cannot be used; the message names file, line and key."""


def key_line(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line where dotted key ``path`` is set in TOML ``text``.

    tomllib gives no positions for keys, so scan: track the current
    ``[table]`` header and match ``key =`` lines (dotted and quoted keys,
    and keys inside a one-line inline table).  Falls back to the line of
    the enclosing table."""
    table: tuple[str, ...] = ()
    best: int | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("[") and not line.startswith("[["):
            table = _split_key(line.strip("[] "))
            if table == path:
                return n
            if best is None and path[:len(table)] == table and table:
                best = n
            continue
        m = re.match(r'((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=',
                     line)
        if not m:
            continue
        full = table + _split_key(m.group(1))
        if full == path:
            return n
        if path[:len(full)] == full and len(full) < len(path):
            # an inline table (or array) holding the key on this line
            rest = path[len(full):]
            if re.search(r"(?:^|[{,\s])" + re.escape(rest[0]) + r"\s*=", line[m.end():]) or \
                    re.search(r'["\']' + re.escape(rest[0]) + r'["\']', line[m.end():]):
                return n
            best = n
    return best


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _split_key(s: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', s)
    return tuple(a or b or c for a, b, c in parts)


class _Checker:
    def __init__(self, text: str, where: str):
        self.text = text
        self.where = where

    def fail(self, path: tuple[str, ...], problem: str) -> PolicyError:
        line = key_line(self.text, path)
        at = f"{self.where}:{line}" if line else self.where
        return PolicyError(f"{at}: key '{'.'.join(path)}': {problem}")

    def table(self, value: Any, path: tuple[str, ...], allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {_tname(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(path + (k,), "unknown key (known: " + ", ".join(allowed) + ")")
        return value

    def choice(self, value: Any, path: tuple[str, ...], choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(path, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value

    def count(self, value: Any, path: tuple[str, ...], lo: int, hi: int, size: bool = False) -> int:
        if size and isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as e:
                raise self.fail(path, str(e)) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer{' or a size' if size else ''}, not {_tname(value)}")
        if not lo <= value <= hi:
            raise self.fail(path, f"{value} is out of range ({lo} to {hi})")
        return value


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)


TOP_KEYS = ("tag", "clipboard", "security_context", "globals", "limits")
GLOBALS_KEYS = ("baseline", "allow", "deny")


def parse(text: str, vm: str, where: str = "<policy>") -> Policy:
    """Validate the TOML ``text`` of VM ``vm``'s policy; ``where`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{where}: invalid TOML: {e}") from None
    c = _Checker(text, where)
    c.table(data, (), TOP_KEYS)
    kw: dict[str, Any] = {}
    tag = data.get("tag", vm)
    if not isinstance(tag, str) or not valid_vm_name(tag):
        if "tag" not in data:
            raise PolicyError(f"{where}: VM name {vm!r} cannot be a tag; set 'tag' (letters, digits, '._-')")
        raise c.fail(("tag",), f"{tag!r} is not a valid tag (1-64 letters, digits, '._-', not starting "
                     "with '.', '-' or '_')")
    if "clipboard" in data:
        kw["clipboard"] = c.choice(data["clipboard"], ("clipboard",), CLIPBOARD_MODES)
    if "security_context" in data:
        kw["security_context"] = c.choice(data["security_context"], ("security_context",), SECURITY_CONTEXT_MODES)
    g = c.table(data.get("globals", {}), ("globals",), GLOBALS_KEYS)
    baseline = c.choice(g.get("baseline", "default"), ("globals", "baseline"), ("default", "none"))
    allowed = dict(DEFAULT_GLOBALS) if baseline == "default" else {}
    allow = g.get("allow", {})
    if not isinstance(allow, dict):
        raise c.fail(("globals", "allow"), f"must be a table of interface = version cap, not {_tname(allow)}")
    from wlproxy.core import bridges  # noqa: PLC0415
    from wlproxy.core.protocol import load  # noqa: PLC0415

    proto = load()
    for iface, cap in allow.items():
        path = ("globals", "allow", iface)
        if not _IFACE_RE.fullmatch(iface):
            raise c.fail(path, "not a Wayland interface name")
        if forbidden(iface):
            raise c.fail(path, f"{iface} is never offered to a VM (the compositor's private interface "
                         "or the security-context manager)")
        if iface not in proto:
            raise c.fail(path, f"{iface} is not known to wlproxy (no protocol XML for it), so it cannot be offered")
        if proto[iface].version < 1 or not bridges.bridgeable(iface, proto):
            raise c.fail(path, f"{iface} carries file descriptors the link cannot carry")
        allowed[iface] = c.count(cap, path, 1, proto[iface].version)
    deny = g.get("deny", [])
    if not isinstance(deny, list):
        raise c.fail(("globals", "deny"), f"must be an array of interface names, not {_tname(deny)}")
    for iface in deny:
        if not isinstance(iface, str) or not _IFACE_RE.fullmatch(iface):
            raise c.fail(("globals", "deny"), f"{iface!r} is not a Wayland interface name")
        if iface in allow:
            raise c.fail(("globals", "deny"), f"{iface} is both allowed and denied")
        if iface not in proto and iface not in KNOWN_NAMES:
            raise c.fail(("globals", "deny"), f"{iface} is not an interface wlproxy knows (a typo?)")
        allowed.pop(iface, None)
    lim = c.table(data.get("limits", {}), ("limits",), Limits.CONFIGURABLE)
    lkw = {}
    for k, v in lim.items():
        lkw[k] = c.count(v, ("limits", k), Limits.MINIMA.get(k, 1), Limits.MAXIMA[k], size=k in Limits.SIZES)
    limits = Limits(**lkw)
    if limits.shm_bytes_per_client > limits.shm_bytes_per_vm:
        raise c.fail(("limits", "shm_bytes_per_client"), "is larger than shm_bytes_per_vm")
    if limits.objects_per_client > limits.objects_per_vm:
        raise c.fail(("limits", "objects_per_client"), "is larger than objects_per_vm")
    return Policy(vm=vm, tag=tag, baseline=baseline, globals=allowed, limits=limits, source=where, **kw)


def default(vm: str) -> Policy:
    if not valid_vm_name(vm):
        raise PolicyError(f"VM name {vm!r} is not valid (1-64 letters, digits, '._-', not starting with '.')")
    return Policy(vm=vm, tag=vm)


def load_file(path: str | Path, vm: str) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{p}: cannot read the policy: {getattr(e, 'strerror', None) or e}") from None
    return parse(text, vm, str(p))


def vms_dirs(vms_dir: str | Path | None = None) -> list[Path]:
    """The VMs directories searched, in order (see :data:`LOOKUP_DOC`)."""
    if vms_dir is not None:
        return [Path(vms_dir)]
    from xdg import BaseDirectory  # noqa: PLC0415

    homes = [BaseDirectory.xdg_config_home, *BaseDirectory.xdg_config_dirs]
    return [Path(d) / "wlproxy" / "vms" for d in dict.fromkeys(homes)]


def candidates(vm: str, dirs: Iterable[Path]) -> list[Path]:
    """Every file that would be the policy of ``vm``, in lookup order."""
    return [p for d in dirs for p in (d / vm / "wlproxy.toml", d / f"{vm}.toml")]


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError as e:  # e.g. a config dir this user may not enter
        raise PolicyError(f"{p}: cannot look for a policy here: {e.strerror}") from None


def lookup(vm: str, vms_dir: str | Path | None = None) -> Path | None:
    """The policy file of ``vm`` (see :data:`LOOKUP_DOC`), or None."""
    if not valid_vm_name(vm):
        raise PolicyError(f"VM name {vm!r} is not valid (1-64 letters, digits, '._-', not starting with '.')")
    for d in vms_dirs(vms_dir):
        found = [p for p in candidates(vm, [d]) if _is_file(p)]
        if len(found) > 1:
            raise PolicyError(f"VM {vm}: both {found[0]} and {found[1]} exist; keep one (the first is used "
                              "when alone)")
        if found:
            return found[0]
    return None


def for_vm(vm: str, path: str | Path | None = None, vms_dir: str | Path | None = None) -> Policy:
    """The effective policy of ``vm``: ``path`` if given, else the lookup, else defaults."""
    if path is not None:
        return load_file(path, vm)
    found = lookup(vm, vms_dir)
    return load_file(found, vm) if found else default(vm)


def vm_of_file(path: str | Path) -> str:
    """The VM a policy file belongs to, from its place: ``NAME/wlproxy.toml`` or ``NAME.toml``."""
    p = Path(path).absolute()
    return p.parent.name if p.name == "wlproxy.toml" else p.name.removesuffix(".toml")
