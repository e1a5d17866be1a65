"""The guest's ``/init``: a busybox shell script, PID 1 in the initramfs.

It mounts ``/proc``, ``/sys``, ``/dev``, loads the modules listed in
``/lib/modules/load-order``, mounts the host root read-only over 9p at
``/mnt``, puts tmpfs on ``/mnt/tmp`` and ``/mnt/run`` (``XDG_RUNTIME_DIR`` is
``/run/user/0``, mode 0700), then ``chroot``s into ``/mnt`` to run
``/usr/bin/python3 /run/wlproxy-run.py`` (see :mod:`wlproxy.vm.guestrun`). Init
stays in the initramfs so that busybox's ``poweroff`` is there at the end.

The last line it prints on the console is ``EXIT_MARKER`` followed by the
command's exit status (255 when init itself failed).
"""

from __future__ import annotations

import os
import re

EXIT_MARKER = "WLPROXY-GUEST-EXIT status="
READY_MARKER = "WLPROXY-GUEST-ROOT uptime="
ROOT_TAG = "hostroot"
RUNNER_PATH = "/wlproxy-run.py"
LOAD_ORDER_PATH = "/lib/modules/load-order"

INIT_SCRIPT = r"""#!/bin/busybox sh
# wlproxy guest init: mount the host root read-only, run one command, power off.
/bin/busybox --install -s /bin
export PATH=/bin

finish() {
    echo "@EXIT_MARKER@$1"
    sync
    poweroff -f
    # poweroff -f does not return; if the machine cannot power off, reboot.
    reboot -f
}
die() {
    echo "wlproxy-init: $*"
    finish 255
}

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
while read -r mod; do
    insmod "/lib/modules/$mod.ko" || die "cannot load module $mod"
done < @LOAD_ORDER_PATH@

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose @ROOT_TAG@ /mnt \
    || die "cannot mount the host root (9p tag @ROOT_TAG@)"
# /tmp is a fresh tmpfs; host directories under /tmp that the command needs
# (wlproxy.tmpbind=a,b: a checkout or venv living there) are bound back in, read-only
mkdir -p /hosttmp && mount --bind /mnt/tmp /hosttmp || die "cannot keep the host's /tmp"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /mnt/tmp || die "cannot mount /tmp"
for word in $(cat /proc/cmdline); do
    case "$word" in
    wlproxy.tmpbind=*)
        for name in $(echo "${word#wlproxy.tmpbind=}" | tr ',' ' '); do
            mkdir -p "/mnt/tmp/$name" && mount --bind "/hosttmp/$name" "/mnt/tmp/$name" \
                || die "cannot bind the host's /tmp/$name"
        done ;;
    esac
done
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /mnt/run || die "cannot mount /run"
mount --rbind /proc /mnt/proc && mount --rbind /sys /mnt/sys && mount --rbind /dev /mnt/dev \
    || die "cannot bind /proc, /sys, /dev into the root"
mkdir -p /mnt/dev/pts /mnt/dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /mnt/dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /mnt/dev/shm
mkdir -p -m 0755 /mnt/run/user && mkdir -p -m 0700 /mnt/run/user/0
cp @RUNNER_PATH@ /mnt/run/wlproxy-run.py || die "cannot copy the runner"
hostname wlproxy-guest

read -r up _ < /proc/uptime
echo "@READY_MARKER@$up"
chroot /mnt /usr/bin/python3 -I /run/wlproxy-run.py
finish $?
"""


def render_init() -> str:
    """The init script with its constants filled in."""
    out = INIT_SCRIPT
    for key, value in {"EXIT_MARKER": EXIT_MARKER, "READY_MARKER": READY_MARKER, "ROOT_TAG": ROOT_TAG,
                       "RUNNER_PATH": RUNNER_PATH, "LOAD_ORDER_PATH": LOAD_ORDER_PATH}.items():
        out = out.replace(f"@{key}@", value)
    return out


def parse_exit_status(console_log: str) -> int | None:
    """The guest command's exit status from the console log, or None if not there yet."""
    for line in reversed(console_log.splitlines()):
        pos = line.find(EXIT_MARKER)
        if pos >= 0:
            digits = line[pos + len(EXIT_MARKER):].strip()
            if digits.isdigit():
                return int(digits)
    return None


_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def tmp_binds(spec: dict) -> list[str]:
    """Top-level entries of the host's /tmp that paths in ``spec`` refer to
    (the guest's /tmp is its own tmpfs, so these are bound back in)."""
    words: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, str):
            words.extend(v.split(os.pathsep))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(spec)
    names = []
    for w in words:
        parts = w.split("/")
        if len(parts) > 2 and parts[0] == "" and parts[1] == "tmp" and _SAFE_NAME.fullmatch(parts[2]):
            if parts[2] not in names:
                names.append(parts[2])
    return names


def guest_cmdline(argv: list[str], *, env: dict[str, str] | None = None, cwd: str = "/",
                  guest_argv: list[str] | None = None, guest_env: dict[str, str] | None = None,
                  display: str = "wayland-0", guest_timeout: float = 20.0, quiet: bool = True) -> str:
    """Kernel command line words telling the guest's init what to run.

    ``guest_argv`` (the guest half, e.g. ``[venv python, "-m", "wlproxy", "guest",
    "--link", "virtio-port:wlproxy.0"]``) starts first; ``argv`` runs once it
    listens on ``$XDG_RUNTIME_DIR/<display>``, with ``WAYLAND_DISPLAY`` set.
    """
    from wlproxy.vm.guestrun import MAX_CMDLINE, check_spec, encode_spec

    spec: dict = {"argv": list(argv), "env": dict(env or {}), "cwd": cwd}
    if guest_argv is not None:
        spec["guest"] = {"argv": list(guest_argv), "env": dict(guest_env or {}), "display": display,
                         "timeout": guest_timeout}
    check_spec(spec)
    words = ("quiet " if quiet else "") + encode_spec(spec)
    binds = tmp_binds(spec)
    if binds:
        words += " wlproxy.tmpbind=" + ",".join(binds)
    if len(words) > MAX_CMDLINE - 200:
        raise ValueError(f"guest command too long for the kernel command line ({len(words)} bytes)")
    return words
