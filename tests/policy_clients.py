"""pywayland clients for the policy tests, run as ``python tests/policy_clients.py MODE ...``.

* ``title --title T --app-id A``: map a window, print ``mapped``; then each
  stdin line becomes a new title (prints ``title``, after a round trip).
* ``bind --name N --interface I --version V``: bind global N; print ``bound``
  or exit 1 (libwayland prints the protocol error on stderr).
* ``clip-set --text T``: map a window, wait for keyboard focus, set the
  selection (text/plain), print ``selection-set``, serve it until stdin EOF.
* ``clip-get --timeout S``: map a window, wait for keyboard focus and the
  first selection event, try to receive text/plain and print JSON
  ``{"offer": bool, "mimes": [...], "data": str|null}``; with ``--any-offer``
  it asks for the data of any wl_data_offer it got, selection or not.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import select
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIME = "text/plain;charset=utf-8"


def say(*a: object) -> None:
    print(*a, flush=True)


def iface_class(name: str):
    """The pywayland class for interface ``name`` (core, or generated from protocols/)."""
    cls = "".join(p.capitalize() for p in name.split("_"))
    if name.startswith("wl_"):
        from pywayland.protocol import wayland

        return getattr(wayland, cls)
    from wlproxy.tools.clients import load_protocol

    for xml in sorted((ROOT / "protocols").glob("*.xml")):
        if re.search(rf'<interface name="{name}"', xml.read_text()):
            return getattr(load_protocol(xml.stem), cls)
    raise KeyError(name)


class Client:
    def __init__(self) -> None:
        from pywayland.client import Display

        self.display = Display()
        self.display.connect()
        self.registry = self.display.get_registry()
        self.globals: dict[str, tuple[int, int]] = {}
        self.registry.dispatcher["global"] = lambda _r, n, i, v: self.globals.__setitem__(i, (n, v))
        self.roundtrip()
        self.focus_serial: int | None = None
        self.configured = False

    def roundtrip(self) -> None:
        if self.display.roundtrip() < 0:
            raise SystemExit("roundtrip failed (protocol error)")

    def bind(self, iface: str, version: int):
        name, offered = self.globals[iface]
        return self.registry.bind(name, iface_class(iface), min(version, offered))

    def pump(self, timeout: float) -> None:
        self.display.flush()
        if select.select([self.display.get_fd()], [], [], max(0.0, timeout))[0]:
            if self.display.dispatch(block=True) < 0:
                raise SystemExit("dispatch failed (protocol error)")
        else:
            self.display.dispatch(block=False)

    def wait(self, cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.1))
        return True

    def keyboard(self) -> None:
        self.seat = self.bind("wl_seat", 5)
        self.kbd = self.seat.get_keyboard()
        self.kbd.dispatcher["keymap"] = lambda _k, _f, fd, _s: os.close(fd)
        self.kbd.dispatcher["enter"] = lambda _k, serial, *_: setattr(self, "focus_serial", serial)

    def map(self, title: str | None = None, app_id: str | None = None, w: int = 64, h: int = 64) -> None:
        self.compositor = self.bind("wl_compositor", 4)
        self.shm = self.bind("wl_shm", 1)
        self.wm = self.bind("xdg_wm_base", 2)
        self.wm.dispatcher["ping"] = lambda wm, serial: wm.pong(serial)
        self.surface = self.compositor.create_surface()
        self.xdg = self.wm.get_xdg_surface(self.surface)

        def configure(x, serial):  # type: ignore[no-untyped-def]
            x.ack_configure(serial)
            self.configured = True

        self.xdg.dispatcher["configure"] = configure
        self.toplevel = self.xdg.get_toplevel()
        if title is not None:
            self.toplevel.set_title(title)
        if app_id is not None:
            self.toplevel.set_app_id(app_id)
        self.surface.commit()
        if not self.wait(lambda: self.configured, 10):
            raise SystemExit("no configure")
        fd = os.memfd_create("policy-client", os.MFD_CLOEXEC)
        os.ftruncate(fd, w * h * 4)
        with mmap.mmap(fd, w * h * 4) as mm:
            mm[:] = b"\xff" * (w * h * 4)
        pool = self.shm.create_pool(fd, w * h * 4)
        os.close(fd)
        self.buffer = pool.create_buffer(0, w, h, w * 4, 1)
        pool.destroy()
        self.surface.attach(self.buffer, 0, 0)
        self.surface.damage(0, 0, w, h)
        self.surface.commit()
        self.roundtrip()


def stdin_lines(c: Client):
    """Stdin lines while dispatching Wayland events; ends at EOF."""
    buf = b""
    while True:
        c.display.flush()
        r = select.select([0, c.display.get_fd()], [], [], 1.0)[0]
        if c.display.get_fd() in r:
            c.pump(0)
        if 0 in r:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode()


def mode_title(a: argparse.Namespace) -> int:
    c = Client()
    c.map(a.title, a.app_id)
    say("mapped")
    for line in stdin_lines(c):
        c.toplevel.set_title(line)
        c.roundtrip()
        say("title")
    return 0


def mode_bind(a: argparse.Namespace) -> int:
    c = Client()
    c.registry.bind(a.name, iface_class(a.interface), a.version)
    c.roundtrip()
    say("bound")
    return 0


def mode_clip_set(a: argparse.Namespace) -> int:
    c = Client()
    c.keyboard()
    mgr = c.bind("wl_data_device_manager", 3)
    device = mgr.get_data_device(c.seat)  # noqa: F841 (kept alive)
    c.map("clip-set")
    if not c.wait(lambda: c.focus_serial is not None, 10):
        raise SystemExit("no keyboard focus")
    source = mgr.create_data_source()
    source.offer(MIME)

    def send(_s, mime: str, fd: int) -> None:  # type: ignore[no-untyped-def]
        try:
            os.write(fd, a.text.encode())
        finally:
            os.close(fd)
        say("sent")

    source.dispatcher["send"] = send
    source.dispatcher["cancelled"] = lambda _s: say("cancelled")
    device.set_selection(source, c.focus_serial)
    c.roundtrip()
    say("selection-set")
    for _ in stdin_lines(c):
        pass
    return 0


def mode_clip_get(a: argparse.Namespace) -> int:
    c = Client()
    c.keyboard()
    mgr = c.bind("wl_data_device_manager", 3)
    device = mgr.get_data_device(c.seat)
    state: dict = {"selection": None, "seen": False}

    def data_offer(_d, offer) -> None:  # type: ignore[no-untyped-def]
        state["last_offer"] = offer
        offer.mimes = []
        offer.dispatcher["offer"] = lambda o, mime: o.mimes.append(mime)

    def selection(_d, offer) -> None:  # type: ignore[no-untyped-def]
        state["selection"] = offer
        state["seen"] = True

    device.dispatcher["data_offer"] = data_offer
    device.dispatcher["selection"] = selection
    c.map("clip-get")
    c.wait(lambda: c.focus_serial is not None and state["seen"], a.timeout)
    offer = state["selection"]
    if offer is None and a.any_offer:  # a hostile client: ask for data it was not offered
        offer = state.get("last_offer")
    out: dict = {"focus": c.focus_serial is not None, "offer": offer is not None,
                 "mimes": getattr(offer, "mimes", []) if offer is not None else [], "data": None}
    if offer is not None:
        r, w = os.pipe2(os.O_CLOEXEC)
        offer.receive(MIME, w)
        c.display.flush()
        os.close(w)
        data = b""
        end = time.monotonic() + a.timeout
        while time.monotonic() < end:
            rr = select.select([r, c.display.get_fd()], [], [], 0.1)[0]
            if c.display.get_fd() in rr:
                c.pump(0)
            if r in rr:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
        os.close(r)
        out["data"] = data.decode(errors="replace")
    say(json.dumps(out))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("title")
    t.add_argument("--title", default="policy test")
    t.add_argument("--app-id", default=None)
    b = sub.add_parser("bind")
    b.add_argument("--name", type=int, required=True)
    b.add_argument("--interface", required=True)
    b.add_argument("--version", type=int, default=1)
    s = sub.add_parser("clip-set")
    s.add_argument("--text", required=True)
    g = sub.add_parser("clip-get")
    g.add_argument("--timeout", type=float, default=5.0)
    g.add_argument("--any-offer", action="store_true", help="receive from any wl_data_offer, even one "
                   "that is not the selection")
    a = p.parse_args()
    return {"title": mode_title, "bind": mode_bind, "clip-set": mode_clip_set, "clip-get": mode_clip_get}[a.mode](a)


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    os._exit(rc)  # skip pywayland's proxy teardown at interpreter exit
