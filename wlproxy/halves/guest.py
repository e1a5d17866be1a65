"""``wlproxy guest``: the compositor that clients inside the appvm talk to.

Each client becomes a channel on one link to the host half.  fds cannot
cross the VM boundary, so the guest half stands in for them: it maps shm
pools and sends the pixels that changed on commit, and bridges clipboard
pipes; keymaps come back as bytes and are turned into fds here.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

from wlproxy.core import bridges, link
from wlproxy.halves.channel import Channel
from wlproxy.cli import UserError, add_sched_slice
from wlproxy.core.codec import IMPLEMENTATION, INVALID_METHOD, Record
from wlproxy.io.fdsock import close_fds
from wlproxy.io.loop import Loop
from wlproxy.io.sched import short_slice
from wlproxy.core.protocol import REQUEST
from wlproxy.core.relay import display_error
from wlproxy.halves.session import LinkSession
from wlproxy.core.shm import SHM_ERROR, Surfaces, Transfer, buffer_error
from wlproxy.io.pools import GuestPool
from wlproxy.io.transport import Endpoint, connect, parse
from wlproxy.io.virtio_port import end_stale_frame
from wlproxy.io.wlsocket import ListeningSocket, SocketError, activated_sockets

log = logging.getLogger("wlproxy.guest")

SHM_CHUNK = 1 << 20



def socket_name(given: str | None) -> str:
    """The guest half's own socket: ``--socket``, else ``$WAYLAND_DISPLAY``, else ``wayland-0``."""
    return given or os.environ.get("WAYLAND_DISPLAY") or "wayland-0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--link", required=True, metavar="URL",
                   help="how to reach the host half: vsock:PORT (cloud-hypervisor), virtio-port:NAME "
                   "(virtio-console port) or unix:PATH (development)")
    p.add_argument("--socket", default=None, metavar="NAME",
                   help="socket name in XDG_RUNTIME_DIR, or absolute path (default: $WAYLAND_DISPLAY, "
                   "else wayland-0); "
                   "ignored when a socket comes from socket activation (LISTEN_FDS)")
    p.add_argument("--reconnect", type=float, default=1.0, metavar="SECONDS",
                   help="retry interval when the link is down (default: %(default)s)")
    p.add_argument("--link-wait", type=float, default=10.0, metavar="SECONDS",
                   help="how long a client that connects while the link is down waits for it before it "
                   "is refused (default: %(default)s)")
    p.add_argument("--no-diff", action="store_true", help="send damaged pixels without the shadow diff")
    add_sched_slice(p, "the VM's", 100)


class GuestChannel(Channel):
    local_dir = REQUEST

    def __init__(self, owner: "GuestLink", ch: int, sock: socket.socket):
        super().__init__(owner, ch, sock, window=owner.window, peer_window=owner.peer_window,
                         name=f"client {ch}")
        self.pools: dict[int, GuestPool] = {}    # wl_shm_pool id -> pool
        self.buffers: dict[int, GuestPool] = {}  # wl_buffer id -> its pool
        self.surfaces = Surfaces(self.codec.tables.proto, diff=owner.server.diff)
        self.sf = self.surfaces.c  # the read-and-forward path applies a frame's requests to it
        self.next_key = 1
        r = self.handlers[REQUEST]
        r[("wl_shm", "create_pool")] = self.create_pool
        r[("wl_shm_pool", "resize")] = self.pool_resize
        r[("wl_shm_pool", "create_buffer")] = self.create_buffer
        r[("wl_shm_pool", "destroy")] = self.pool_destroy
        r[("wl_buffer", "destroy")] = self.buffer_destroy
        r[("wl_compositor", "create_surface")] = self.create_surface
        for m in ("attach", "damage", "damage_buffer", "commit"):  # what surface.c decodes (sf_request)
            r[("wl_surface", m)] = self.surface_request
        r[("wl_surface", "set_buffer_scale")] = self.set_scale
        r[("wl_surface", "set_buffer_transform")] = self.set_transform
        r[("wl_surface", "destroy")] = self.surface_destroy
        r[("wp_viewporter", "get_viewport")] = self.get_viewport
        proto = self.codec.tables.proto
        for iface in proto.interfaces:  # pipes are bridged; any other fd cannot cross
            for m in iface.requests:
                if m.nfds and (iface.name, m.name) not in r:
                    pipe = (iface.name, m.name) in bridges.PIPES
                    r[(iface.name, m.name)] = self.pipe_request if pipe else self.unsupported_fd
        self.intercept()
        self.owner.writer.send(ch, link.frame(link.OPEN, ch, f"client {ch}".encode()))

    # -- errors --------------------------------------------------------------
    def local_error(self, rec: Record, text: str) -> None:
        log.warning("%s: protocol error: %s", self.name, text)
        self.client_error(rec.obj, rec.code, text)

    def client_error(self, obj: int, code: int, text: str) -> None:
        self.local.write(display_error(obj, code, text))
        self.close(f"protocol error: {text}", notify=True, flush_local=True)

    def remote_error(self, rec: Record, text: str) -> None:
        log.error("%s: invalid event from the host: %s", self.name, text)
        self.client_error(1, IMPLEMENTATION, f"wlproxy: invalid event from the host half: {text}")

    def unsupported_fd(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        close_fds(fds)
        info = self.codec.lookup(obj)
        what = info.iface.name if info else "?"
        self.client_error(1, INVALID_METHOD, f"{what}@{obj}: passing this fd to the host is not supported")

    # -- shm -----------------------------------------------------------------
    def create_pool(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        pool_id, fd, size = args
        if size <= 0:
            close_fds(fds)
            self.client_error(obj, SHM_ERROR["invalid_stride"], f"invalid pool size {size}")
            return
        try:
            pool = GuestPool(self.next_key, fd, size)
        except (OSError, ValueError) as e:
            close_fds(fds)
            self.client_error(obj, SHM_ERROR["invalid_fd"], f"cannot map the pool: {e}")
            return
        self.next_key += 1
        self.pools[pool_id] = pool
        self.queue_frame(link.fd_shm_frame(self.ch, pool.key, size))
        self.queue_data(data)

    def pool_resize(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        (size,) = args
        pool = self.pools.get(obj)
        if pool is not None and size > pool.size:
            try:
                pool.resize(size)
            except (OSError, ValueError) as e:
                self.client_error(obj, SHM_ERROR["invalid_fd"], f"cannot remap the pool: {e}")
                return
        self.queue_data(data)

    def create_buffer(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        bid, offset, width, height, stride, fmt = args
        pool = self.pools.get(obj)
        if pool is not None:
            refused = buffer_error(pool.size, offset, width, height, stride, fmt)
            if refused:  # the C model only ever sees buffers inside their pool
                log.warning("%s: protocol error: %s", self.name, refused[1])
                self.client_error(obj, *refused)
                return
            pool.refs += 1
            self.buffers[bid] = pool
            self.surfaces.buffer_add(bid, pool, offset, width, height, stride, fmt)
        self.queue_data(data)

    def _unref(self, pool: GuestPool) -> None:
        pool.refs -= 1
        if pool.refs == 0:
            self.surfaces.pool_gone(pool)
            pool.release()
            self.queue_frame(link.u32_frame(link.SHM_FORGET, self.ch, pool.key))

    def pool_destroy(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.queue_data(data)
        pool = self.pools.pop(obj, None)
        if pool is not None:
            pool.close_fd()  # no more resizes possible
            self._unref(pool)

    def buffer_destroy(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.queue_data(data)
        pool = self.buffers.pop(obj, None)
        if pool is not None:
            self.surfaces.buffer_remove(obj)
            self._unref(pool)

    # -- surfaces (the model is C's: surface.c) ------------------------------
    def create_surface(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.surfaces.surface_add(args[0])
        self.queue_data(data)

    def surface_destroy(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.surfaces.surface_remove(obj)
        self.queue_data(data)

    def get_viewport(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.surfaces.set_viewport(args[1])  # (new viewport, its surface)
        self.queue_data(data)

    def surface_request(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        """attach, damage, damage_buffer, commit: the C model decodes and applies them."""
        t = self.surfaces.request(data)
        if t is not None:
            self.queue_pixels(t)
        self.queue_data(data)

    def set_scale(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.surfaces.set_scale(obj, args[0])
        self.queue_data(data)

    def set_transform(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.surfaces.set_transform(obj, args[0])
        self.queue_data(data)

    # -- a frame the C surface model applied (Channel._read_local) ------------
    def _queue_applied(self, r) -> None:
        used = r.consumed
        view = self.local.view
        t = self.surfaces.spans(r.nspans, r.pool)
        split = r.split if t is not None else used
        if split:
            self.queue_data(view[:split])
        if t is not None:
            self.queue_pixels(t)
            self.queue_data(view[split:used])
        self.local.consume(used)

    def queue_pixels(self, t: Transfer) -> None:
        """SHM_DATA frames for ``t``, read from the pool when the link can take them."""
        total = t.total
        mm = t.pool.mm
        key, ch = t.pool.key, self.ch

        def job():
            view = memoryview(mm)
            try:
                for off, n in t.spans:
                    pos = 0
                    while pos < n:
                        k = min(SHM_CHUNK, n - pos)
                        yield [link.shm_data_header(ch, key, off + pos, k), view[off + pos:off + pos + k]]
                        pos += k
            finally:
                view.release()

        self.queue_bulk(job(), total)

    def pipe_request(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        pid = self.owner.pipes.export_sink(self.ch, fds[0])
        self.queue_frame(link.u32_frame(link.FD_PIPE, self.ch, pid))
        self.queue_data(data)

    def release(self) -> None:
        self.sf = None
        self.surfaces.close()
        for pool in set(self.pools.values()) | set(self.buffers.values()):
            pool.release()
        self.pools.clear()
        self.buffers.clear()


HELLO_TIMEOUT = 5.0  # seconds the host half has to answer a new link with its HELLO


class GuestLink(LinkSession):
    side = "guest"
    accept = frozenset({link.HELLO, link.ERROR, link.CLOSE, link.DATA, link.CREDIT, link.FD_KEYMAP,
                        link.FD_PIPE, link.PIPE_DATA, link.PIPE_CLOSE, link.PIPE_CREDIT})
    pipe_id_base = 1

    def __init__(self, server: "GuestServer", fd: int, name: str):
        self.server = server
        self.next_channel = 1
        self._hello_timer = None
        super().__init__(server.loop, fd, name=name)
        if not self.closed:
            self._hello_timer = self.loop.call_later(HELLO_TIMEOUT, self._no_hello)

    def peer_pipe_id_ok(self, pid: int) -> bool:
        return pid >= 0x80000000

    def on_hello(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.server.link_ready(self)

    def _no_hello(self) -> None:
        """The host half said nothing.  On a virtio-console port, the stream outlives the guest
        half: a predecessor that died in the middle of a frame left the host waiting for the
        rest, and our HELLO went into that frame.  End the frame for it, so that the host half
        drops that stale link and qemu connects afresh; then start over."""
        if self.closed or self.peer_window:
            return
        reason = f"no HELLO from the host half within {HELLO_TIMEOUT:g} s"
        if self.server.endpoint.kind == "virtio-port":
            sent = end_stale_frame(self.fd)
            log.warning("%s: %s; sent %d bytes to end a frame a previous guest half left unfinished",
                        self.name, reason, sent)
        self.shutdown(reason, violation=False)

    def add_client(self, sock: socket.socket) -> None:
        ch = self.next_channel
        self.next_channel += 1
        self.channels[ch] = GuestChannel(self, ch, sock)
        self.fast_add(self.channels[ch])
        log.info("client %d connected", ch)

    def channel_for(self, f: link.Frame):
        ch = self.channels.get(f.channel)
        if ch is None and f.channel >= self.next_channel:
            raise link.LinkError(f"frame for unknown channel {f.channel}")
        return ch

    def handle_frame(self, ch: GuestChannel, f: link.Frame) -> None:
        if f.type == link.FD_KEYMAP:
            fd = os.memfd_create("wlproxy-keymap", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.write(fd, f.payload)
            ch.remote_fd(fd, ("keymap",))
        else:
            super().handle_frame(ch, f)

    def link_lost(self, ch: GuestChannel, reason: str) -> None:
        ch.local.write(display_error(1, IMPLEMENTATION, "wlproxy: the link to the host was lost"))
        ch.close(f"link lost: {reason}", notify=False, flush_local=True)

    def on_shutdown(self, reason: str) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.server.link_down(reason)


class GuestServer:
    """The listening socket, the link and its reconnection.

    A client that connects while there is no link up (not yet, or being re-established)
    waits for the next one, up to ``link_wait`` seconds, before it is refused.
    """

    def __init__(self, loop: Loop, listeners: list, endpoint: Endpoint, retry: float, diff: bool = True,
                 link_wait: float = 10.0):
        self.loop = loop
        self.listeners = listeners
        self.endpoint = endpoint
        self.retry = retry
        self.diff = diff  # False: damaged pixels go without the shadow diff
        self.link_wait = link_wait
        self.link: GuestLink | None = None
        self.waiting: list[socket.socket] = []  # clients waiting for a link that has said HELLO
        self.stopping = False
        for lst in listeners:
            loop.add_reader(lst.fileno(), lambda lst=lst: self._accept(lst))
        self._connect()

    def _connect(self) -> None:
        try:
            fd = connect(self.endpoint)
        except SocketError as e:
            log.warning("link %s: %s; retrying in %.1fs", self.endpoint, e, self.retry)
            self.loop.call_later(self.retry, self._connect)
            return
        lk = GuestLink(self, fd, f"link {self.endpoint}")
        if not lk.closed:
            self.link = lk
            log.info("connected to the host half at %s", self.endpoint)

    def link_ready(self, lk: GuestLink) -> None:
        """The host half said HELLO: the waiting clients go to it."""
        waiting, self.waiting = self.waiting, []
        for sock in waiting:
            lk.add_client(sock)

    def link_down(self, reason: str) -> None:
        self.link = None
        if self.stopping:
            return
        log.warning("link to the host half lost (%s); reconnecting", reason)
        self.loop.call_later(self.retry, self._connect)

    def _wait_for_link(self, conn: socket.socket) -> None:
        self.waiting.append(conn)
        self.loop.call_later(self.link_wait, lambda: self._give_up(conn))

    def _give_up(self, conn: socket.socket) -> None:
        if conn not in self.waiting:
            return  # it got a link
        self.waiting.remove(conn)
        log.warning("a client waited %g s for the link to the host half: refused", self.link_wait)
        try:
            conn.setblocking(False)
            conn.send(display_error(1, IMPLEMENTATION, "wlproxy: the host half is not reachable"))
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        """Stop: the link and any client still waiting for one."""
        self.stopping = True
        if self.link is not None:
            self.link.shutdown("guest half stopping", violation=False)
        for conn in self.waiting:
            conn.close()
        self.waiting.clear()

    def _accept(self, lst) -> None:
        try:
            conn = lst.accept()
        except OSError:
            return
        if isinstance(conn, tuple):
            conn = conn[0]
        if conn is None:
            return
        if self.link is None or self.link.closed or not self.link.peer_window:
            self._wait_for_link(conn)
            return
        self.link.add_client(conn)


def run(args: argparse.Namespace) -> int:
    try:
        endpoint = parse(args.link)
    except ValueError as e:
        raise UserError(str(e)) from None
    loop = Loop()
    short_slice(args.sched_slice)
    activated = activated_sockets()
    owned: ListeningSocket | None = None
    if activated:
        listeners: list = activated
        log.info("using %d socket(s) from socket activation", len(activated))
    else:
        try:
            owned = ListeningSocket(socket_name(args.socket))
        except SocketError as e:
            raise UserError(str(e)) from None
        listeners = [owned]
        log.info("listening on %s", owned.path)
    server = GuestServer(loop, listeners, endpoint, args.reconnect, not args.no_diff, args.link_wait)
    loop.stop_on_signals()
    try:
        loop.run()
    finally:
        server.close()
        if owned is not None:
            owned.close()
    return 0

