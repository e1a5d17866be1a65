"""``wlproxy host``: the host half, the trust boundary in front of weston.

It accepts links from one VM's guest half (on cloud-hypervisor's hybrid
vsock socket ``<vsock socket>_<port>``, or any Unix socket), and gives each
guest client its own ordinary connection to weston.  Everything read from the
link is validated: the link framing by ``LinkDecoder``, every Wayland message
by the codec, every fd stand-in against the message that consumes it.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import socket
import time
import unicodedata

from wlproxy.core import bridges, link, policy, wire
from wlproxy._codec import ffi, lib
from wlproxy.halves.channel import Channel
from wlproxy.cli import UserError, add_sched_slice
from wlproxy.core.codec import IMPLEMENTATION, INVALID_METHOD, INVALID_OBJECT, NO_MEMORY, Record, default_tables
from wlproxy.io.fdsock import close_fds
from wlproxy.logs import audit
from wlproxy.io import notify
from wlproxy.io.loop import Loop
from wlproxy.io.sched import short_slice
from wlproxy.core.protocol import EVENT, REQUEST
from wlproxy.core.relay import display_error
from wlproxy.halves.session import LinkSession
from wlproxy.core.shm import SHM_ERROR, buffer_error
from wlproxy.io.pools import HostPool
from wlproxy.io.transport import accepted, is_listening, listen, parse
from wlproxy.io.wlsocket import SocketError, connect_display

log = logging.getLogger("wlproxy.host")



# Resource limits enforced on each VM: the policy's ``[limits]``.
HostLimits = policy.Limits
MAX_LINKS = 16  # links one VM may hold open at once (its guest half needs one)
TITLE_BYTES = 1024  # a guest's title is cut to this (after the tag), app_id to APP_ID_BYTES
APP_ID_BYTES = 200
_BIDI = frozenset(map(chr, [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def clean_title(s: str | None, limit: int = TITLE_BYTES) -> str:
    """A guest's text made safe to show after the VM tag: valid UTF-8, no
    control, line-separator or bidi-override characters, at most ``limit`` bytes."""
    if not s:
        return ""
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    s = "".join(ch for ch in s if ch not in _BIDI and unicodedata.category(ch) not in ("Cc", "Zl", "Zp"))
    b = s.encode()
    if len(b) > limit:
        s = b[:limit].decode("utf-8", "ignore")
    return s


def clean_app_id(s: str | None) -> str:
    """A guest's app_id reduced to ``[A-Za-z0-9._-]``, at most APP_ID_BYTES."""
    s = clean_title(s, APP_ID_BYTES)
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", required=True, metavar="PATH",
                   help="where the guest half connects: cloud-hypervisor's <vsock socket>_<port> "
                   "(e.g. /run/vm/NAME/vsock_6000), unix:PATH, or fd:N for an inherited socket")
    p.add_argument("--vm", default="vm", metavar="NAME", help="the VM's name, for logs and policy (default: %(default)s)")
    p.add_argument("--display", metavar="NAME", help="weston's socket (default: $WAYLAND_DISPLAY)")
    p.add_argument("--policy", metavar="FILE", help="policy file (default: looked up by VM name, see "
                   "'wlproxy policy show --help')")
    p.add_argument("--vms-dir", metavar="DIR", help="look the policy up in this VMs directory only")
    p.add_argument("--ready-fd", type=int, metavar="FD", default=None,
                   help="write a newline to FD once listening (s6's notification-fd); READY=1 also goes "
                   "to $NOTIFY_SOCKET when set (systemd Type=notify)")
    p.add_argument("--allow-root", action="store_true",
                   help="run even as root (refused otherwise: the host half parses what an untrusted VM "
                   f"sends); ${ALLOW_ROOT_ENV}=1 does the same")
    add_sched_slice(p, "the host's")


ALLOW_ROOT_ENV = "WLPROXY_ALLOW_ROOT"


def check_not_root(allow: bool) -> None:
    """Refuse to run with root's powers unless told to."""
    if os.geteuid() == 0 and not allow and os.environ.get(ALLOW_ROOT_ENV) != "1":
        raise UserError("refusing to run as root: the host half parses what an untrusted VM sends; run it "
                        f"as an unprivileged user (see the systemd unit), or pass --allow-root "
                        f"(${ALLOW_ROOT_ENV}=1)")


class _Closed(Exception):
    """The channel closed while a batch of its messages was being handled."""


class HostChannel(Channel):
    local_dir = EVENT

    def __init__(self, owner: "HostLink", ch: int, sock: socket.socket):
        super().__init__(owner, ch, sock, window=owner.window, peer_window=owner.peer_window,
                         name=f"{owner.vm} client {ch}")
        self.codec.set_max_objects(owner.limits_host.objects_per_client)
        self.pools: dict[int, HostPool] = {}      # link key -> pool
        self.pool_objs: dict[int, HostPool] = {}  # wl_shm_pool id -> pool
        self.pool_bytes = 0
        self.visible: dict[int, tuple[str, int]] = {}  # global name -> (interface, capped version)
        self.hidden: set[int] = set()
        self.policy: policy.Policy = owner.server.policy
        # request rate and object count, kept in C (the fast loop accounts for what it forwards)
        lim = owner.limits_host
        a = self.acct = ffi.new("struct fl_acct *")
        a.tokens = a.burst = float(lim.message_burst)
        a.rate = float(lim.messages_per_second)
        a.t_last = time.monotonic()
        a.vm_objects = owner.server.vm_objects
        a.vm_limit = lim.objects_per_vm
        r, e = self.handlers[REQUEST], self.handlers[EVENT]
        r[("wl_registry", "bind")] = self.bind
        # identity: every title carries the VM's tag, every app_id its namespace
        for shell_surface, toplevel in (("xdg_surface", "xdg_toplevel"), ("zxdg_surface_v6", "zxdg_toplevel_v6")):
            r[(shell_surface, "get_toplevel")] = self.get_toplevel
            r[(toplevel, "set_title")] = self.set_title
            r[(toplevel, "set_app_id")] = self.set_app_id
        r[("wl_shell", "get_shell_surface")] = self.get_toplevel
        r[("wl_shell_surface", "set_title")] = self.set_title
        r[("wl_shell_surface", "set_class")] = self.set_app_id
        # clipboard policy (the pipe bridging itself is in pipe_request/pipe_event)
        for dev in ("wl_data_device", "zwp_primary_selection_device_v1"):
            r[(dev, "set_selection")] = self.set_selection
            e[(dev, "selection")] = self.selection
        r[("wl_data_device", "start_drag")] = self.start_drag
        for offer in ("wl_data_offer", "zwp_primary_selection_offer_v1"):
            e[(offer, "offer")] = self.offer_mime
        r[("wl_shm", "create_pool")] = self.create_pool
        r[("wl_shm_pool", "resize")] = self.pool_resize
        r[("wl_shm_pool", "create_buffer")] = self.create_buffer
        r[("wl_shm_pool", "destroy")] = self.pool_destroy
        e[("wl_registry", "global")] = self.global_
        e[("wl_registry", "global_remove")] = self.global_remove
        e[("wl_keyboard", "keymap")] = self.keymap
        proto = self.codec.tables.proto
        for iface in proto.interfaces:
            for m in iface.requests:
                if m.nfds and (iface.name, m.name) not in r:
                    r[(iface.name, m.name)] = self.pipe_request if (iface.name, m.name) in bridges.PIPES else self.bad_fd_request
            for m in iface.events:
                if m.nfds and (iface.name, m.name) not in e:
                    e[(iface.name, m.name)] = self.pipe_event if (iface.name, m.name) in bridges.PIPES else self.bad_fd_event
        self.intercept()

    # -- errors --------------------------------------------------------------
    def client_error(self, obj: int, code: int, text: str, *, audit_event: str = "protocol_violation",
                     **fields: object) -> None:
        """A protocol error for this guest client: it gets wl_display.error, its
        weston connection closes, the VM's other clients go on.  One audit
        line (``audit_event``, with ``fields``) records it."""
        if self.closed:
            return
        log.warning("%s: %s", self.name, text)
        audit(audit_event, vm=self.owner.vm, client=self.ch, error=text, code=code, **fields)
        self.pending.clear()
        w = self.owner.writer
        err = display_error(obj, code, text)
        w.send(self.ch, link.header(link.DATA, self.ch, len(err)) + err)
        w.send(self.ch, link.close_frame(self.ch, 1, text))
        self.close(text, notify=False, keep_queued=True)

    def remote_error(self, rec: Record, text: str) -> None:
        if rec.code == NO_MEMORY and text.startswith("object limit"):
            self.client_error(rec.obj, rec.code, text, audit_event="limit_hit", limit="objects_per_client",
                              value=self.owner.limits_host.objects_per_client)
        else:
            self.client_error(rec.obj, rec.code, text)

    # -- no message after a close ---------------------------------------------
    # A handler may close the channel (a protocol error) in the middle of a
    # batch of messages: the rest of the batch must not reach any handler.
    def _remote_message(self, *args) -> None:
        super()._remote_message(*args)
        if self.closed:
            raise _Closed

    def remote_forward(self, data: memoryview, fds: list) -> None:
        super().remote_forward(data, fds)
        if self.closed:
            raise _Closed

    def _local_message(self, *args) -> None:
        super()._local_message(*args)
        if self.closed:
            raise _Closed

    def local_forward(self, data: memoryview, fds: list) -> None:
        super().local_forward(data, fds)
        if self.closed:
            raise _Closed

    def _read_local(self, c_read: bool = False) -> None:
        try:
            super()._read_local(c_read)
        except _Closed:
            pass

    def c_event(self, kind: int, arg: int) -> None:
        if kind == lib.FL_EV_ACCOUNT:
            if not self.closed:
                self.account_failed(arg)
        else:
            super().c_event(kind, arg)

    # -- per-client accounting: message rate, the VM's object total -----------
    def flush(self) -> None:
        super().flush()
        self.owner.check_backlog()

    def remote_data(self, payload: bytes) -> None:
        try:
            super().remote_data(payload)
        except _Closed:
            return
        if not self.closed:
            self.account()

    def remote_fed(self, payload, recs, used: int) -> None:
        try:
            super().remote_fed(payload, recs, used)
        except _Closed:
            pass

    def remote_done(self) -> None:
        if not self.closed:
            self.account()

    def account(self) -> None:
        rc = lib.fl_account(self.acct, self.codec.c_conn)
        if rc != lib.FL_ACCT_OK:
            self.account_failed(rc)

    def account_failed(self, rc: int) -> None:
        """The client went over its request rate (``FL_ACCT_RATE``) or its VM over its object total."""
        lim = self.owner.limits_host
        if rc == lib.FL_ACCT_RATE:
            self.client_error(1, IMPLEMENTATION, f"message rate over {lim.messages_per_second}/s "
                              f"(burst {lim.message_burst})", audit_event="limit_hit",
                              limit="messages_per_second", value=lim.messages_per_second)
        else:
            self.client_error(1, NO_MEMORY, f"VM {self.owner.vm} is over its limit of {lim.objects_per_vm} objects",
                              audit_event="limit_hit", limit="objects_per_vm", value=lim.objects_per_vm)

    def local_error(self, rec: Record, text: str) -> None:
        log.error("%s: invalid event from the compositor: %s", self.name, text)
        self.close(f"invalid event from the compositor: {text}", notify=True)

    def _pop_kind(self, want: str, obj: int) -> tuple | None:
        kind = self.kinds.popleft()
        if kind[0] != want:
            self.client_error(1, INVALID_METHOD, f"object {obj}: fd record of kind {kind[0]}, expected {want}")
            return None
        return kind

    def bad_fd_request(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        close_fds(fds)
        self.client_error(1, INVALID_METHOD, f"object {obj}: this request's fd cannot cross the link")

    def bad_fd_event(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        close_fds(fds)
        log.error("%s: compositor sent an fd the link cannot carry (object %d)", self.name, obj)
        self.close("compositor sent an fd the link cannot carry", notify=True)

    # -- registry ------------------------------------------------------------
    def global_(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        name, iface, version = args
        cap = self.owner.server.global_cap(iface)
        if cap is None or version < 1:
            self.hidden.add(name)
            self.visible.pop(name, None)
            return
        version = min(version, cap)
        self.visible[name] = (iface, version)
        self.queue_data(self._message(EVENT, obj, "wl_registry", "global", name, iface, version))

    def global_remove(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        (name,) = args
        if name in self.visible:
            del self.visible[name]
            self.queue_data(data)
        self.hidden.discard(name)

    def bind(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        name, new = args
        g = self.visible.get(name)
        if g is None:
            why = "hidden by policy" if name in self.hidden else "unknown name"
            self.client_error(obj, INVALID_OBJECT, f"invalid global {new.interface} ({name})", audit_event="bind_denied",
                              interface=new.interface, name=name, reason=why)
            return
        if g[0] != new.interface:
            self.client_error(obj, INVALID_OBJECT,
                              f"invalid interface for global {name}: have {g[0]}, wanted {new.interface}",
                              audit_event="bind_denied", interface=new.interface, name=name, reason="wrong interface")
            return
        if not 1 <= new.version <= g[1]:
            self.client_error(obj, INVALID_OBJECT,
                              f"invalid version for global {g[0]} ({name}): have {g[1]}, wanted {new.version}",
                              audit_event="bind_denied", interface=new.interface, name=name, reason="version above cap")
            return
        self.local.write(data)

    # -- identity ------------------------------------------------------------
    def _message(self, direction: int, obj: int, iface: str, name: str, *args) -> bytes:
        """One message built from the XML signature."""
        return wire.encode(obj, self.codec.tables.proto[iface].message(direction, name), list(args))[0]

    def _request(self, obj: int, iface: str, name: str, *args) -> bytes:
        return self._message(REQUEST, obj, iface, name, *args)

    def get_toplevel(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        """A new toplevel starts with the bare tag as its title and app_id, so
        it is marked even if the guest never sets them."""
        new_id = args[0]
        info = self.codec.lookup(new_id)
        self.local.write(data)
        if info is None:
            return
        tag = self.policy.tag
        if info.iface.name == "wl_shell_surface":
            out = self._request(new_id, "wl_shell_surface", "set_title", f"[{tag}]") + \
                self._request(new_id, "wl_shell_surface", "set_class", tag)
        else:
            out = self._request(new_id, info.iface.name, "set_title", f"[{tag}]") + \
                self._request(new_id, info.iface.name, "set_app_id", tag)
        self.local.write(out)

    def _iface(self, obj: int) -> str:
        """The interface of ``obj``, which a message being handled names (the codec has it)."""
        info = self.codec.lookup(obj)
        return info.iface.name if info else "xdg_toplevel"  # (only if the map lost it: a title request)

    def set_title(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        self.local.write(self._request(obj, self._iface(obj), "set_title",
                                       f"[{self.policy.tag}] {clean_title(args[0])}"))

    def set_app_id(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        iface = self._iface(obj)
        name = "set_class" if iface == "wl_shell_surface" else "set_app_id"
        self.local.write(self._request(obj, iface, name, f"{self.policy.tag}.{clean_app_id(args[0])}"))

    # -- clipboard -----------------------------------------------------------
    def _clipboard_blocked(self, what: str, direction: str) -> None:
        log.info("%s: clipboard policy %s blocks %s", self.name, self.policy.clipboard, what)
        audit("clipboard_blocked", vm=self.owner.vm, client=self.ch, what=what, direction=direction,
              policy=self.policy.clipboard)

    def set_selection(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        if self.policy.guest_to_host:
            self.local.write(data)
            return
        if args[0]:  # a source (null: clearing the selection)
            self._clipboard_blocked("set_selection", "to-host")
        # dropped: the guest may neither offer data to the host nor clear the host's selection

    def start_drag(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        if args[0] and not self.policy.guest_to_host:
            self._clipboard_blocked("start_drag", "to-host")
            # a drag without data (no source): only the guest's own surfaces see it
            self.local.write(self._request(obj, self._iface(obj), "start_drag", 0, *args[1:]))
            return
        self.local.write(data)

    def offer_mime(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        if self.policy.host_to_guest:
            self.queue_data(data)
        # else: the guest sees offers with no types at all

    def selection(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        if self.policy.host_to_guest:
            self.queue_data(data)
            return
        self.queue_data(self._message(EVENT, obj, self._iface(obj), "selection", 0))  # no selection

    # -- shm -----------------------------------------------------------------
    def new_pool(self, key: int, size: int) -> None:
        lim = self.owner.limits_host
        if key in self.pools:
            raise link.LinkError(f"{self.name}: pool key {key} reused")
        if size <= 0 or self.pool_bytes + size > lim.shm_bytes_per_client or \
                self.owner.server.pool_bytes + size > lim.shm_bytes_per_vm:
            # refuse as a protocol error for this client when its create_pool arrives
            self.remote_fd(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), ("refused", size))
            return
        try:
            pool = HostPool(key, size, f"wlproxy-{self.owner.vm}", self.ch)
        except OSError as e:
            raise link.LinkError(f"cannot create a pool of {size} bytes: {e.strerror}") from None
        self.pools[key] = pool
        self.owner.pool_add(pool)
        self._account(size)
        self.remote_fd(pool.dup_fd(), ("shm", pool))

    def _account(self, n: int) -> None:
        self.pool_bytes += n
        self.owner.pool_bytes += n
        self.owner.server.pool_bytes += n

    def create_pool(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        pool_id, _, size = args  # (new_id, fd, size)
        kind = self.kinds.popleft()
        if kind[0] == "refused":
            close_fds(fds)
            self.client_error(obj, NO_MEMORY, f"pool of {kind[1]} bytes is over the shm limit",
                              audit_event="limit_hit", limit="shm_bytes", value=kind[1])
            return
        if kind[0] != "shm" or kind[1].size != size:
            close_fds(fds)
            self.client_error(obj, SHM_ERROR["invalid_fd"], "create_pool: the fd record does not match this pool")
            return
        self.pool_objs[pool_id] = kind[1]
        self.local.write(data, fds)

    def pool_resize(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        (size,) = args
        pool = self.pool_objs[obj]
        if size > pool.size:
            lim = self.owner.limits_host
            grow = size - pool.size
            if self.pool_bytes + grow > lim.shm_bytes_per_client or \
                    self.owner.server.pool_bytes + grow > lim.shm_bytes_per_vm:
                self.client_error(obj, NO_MEMORY, f"resize to {size} bytes is over the shm limit",
                                  audit_event="limit_hit", limit="shm_bytes", value=size)
                return
            try:
                pool.resize(size)
            except (OSError, ValueError) as e:
                self.client_error(obj, NO_MEMORY, f"cannot resize the pool: {e}")
                return
            self._account(grow)
        self.local.write(data)

    def create_buffer(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        refused = buffer_error(self.pool_objs[obj].size, *args[1:])  # offset, width, height, stride, format
        if refused:
            self.client_error(obj, *refused)
            return
        self.local.write(data)

    def pool_destroy(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        pool = self.pool_objs.pop(obj, None)
        if pool is not None:
            pool.close_fd()
        self.local.write(data)

    def forget_pool(self, key: int) -> None:
        pool = self.pools.get(key)
        if pool is None:
            raise link.LinkError(f"{self.name}: SHM_FORGET for unknown pool {key}")
        for oid, p in list(self.pool_objs.items()):
            if p is pool:  # the guest may not forget a pool it can still resize
                raise link.LinkError(f"{self.name}: SHM_FORGET for pool {key} still in use by wl_shm_pool@{oid}")
        del self.pools[key]  # only now: a refused SHM_FORGET leaves the pool to release()
        self._account(-pool.size)
        self.owner.pool_remove(pool)
        pool.close()


    # -- keymaps and pipes ---------------------------------------------------
    def keymap(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        fmt, fd, size = args
        try:
            if size > self.owner.limits_host.max_keymap:
                raise OSError("keymap too large")
            blob = b""
            if size:
                with mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ) as mm:
                    blob = mm[:size]
        except (OSError, ValueError) as e:
            log.error("%s: cannot read the keymap: %s", self.name, e)
            blob = b""
        finally:
            os.close(fd)
        self.queue_frame(link.frame(link.FD_KEYMAP, self.ch, blob))
        if len(blob) != size:  # keep the event consistent with what we could carry
            self.queue_data(self._message(EVENT, obj, "wl_keyboard", "keymap", fmt, fd, len(blob)))
        else:
            self.queue_data(data)

    def pipe_event(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        # wl_data_source.send (or primary): a host client wants the guest's data
        if not self.policy.guest_to_host:
            close_fds(fds)
            self._clipboard_blocked("send", "to-host")
            return
        pid = self.owner.pipes.export_sink(self.ch, fds[0])
        self.queue_frame(link.u32_frame(link.FD_PIPE, self.ch, pid))
        self.queue_data(data)

    def pipe_request(self, obj: int, args: list, data: memoryview, fds: list) -> None:
        if self._pop_kind("pipe", obj) is None:
            close_fds(fds)
            return
        # wl_data_offer.receive (or primary): the guest wants a host client's data
        if not self.policy.host_to_guest:
            close_fds(fds)  # the guest's reader sees end-of-file at once
            self._clipboard_blocked("receive", "from-host")
            return
        self.local.write(data, fds)

    def release(self) -> None:
        a = self.acct
        a.vm_objects[0] -= a.objects
        a.objects = 0
        for pool in self.pools.values():
            self._account(-pool.size)
            self.owner.pool_remove(pool)
            pool.close()
        self.pools.clear()
        self.pool_objs.clear()


class HostLink(LinkSession):
    side = "host"
    accept = frozenset({link.HELLO, link.ERROR, link.OPEN, link.CLOSE, link.DATA, link.CREDIT, link.FD_SHM,
                        link.SHM_DATA, link.SHM_FORGET, link.FD_PIPE, link.PIPE_DATA, link.PIPE_CLOSE,
                        link.PIPE_CREDIT})
    pipe_id_base = 0x80000000

    def __init__(self, server: "HostServer", fd: int, n: int):
        self.server = server
        self.limits_host = server.limits
        self.last_opened = 0
        self.pool_bytes = 0
        self.backlog_failing = False
        super().__init__(server.loop, fd, name=f"{server.vm} link {n}", vm=server.vm)

    def peer_pipe_id_ok(self, pid: int) -> bool:
        return 0 < pid < 0x80000000

    def after_input(self) -> None:
        self.check_backlog()

    def check_backlog(self) -> None:
        """Drop the link when more than ``pending_link_bytes`` wait for the
        guest to read them: it announced a window it does not drain."""
        lim = self.limits_host.pending_link_bytes
        if self.closed or self.backlog_failing or self.writer.queued_bytes <= lim:
            return
        self.backlog_failing = True
        queued = self.writer.queued_bytes
        audit("limit_hit", vm=self.vm, link=self.name, limit="pending_link_bytes", value=lim)
        # not from inside a channel's read path: drop the link on the next loop turn
        why = f"{queued} bytes wait for the guest to read its link (limit {lim}): it stopped reading"
        self.loop.call_soon(lambda: None if self.closed else self.fail(why))

    def channel_for(self, f: link.Frame):
        if f.type == link.OPEN:
            self.open_channel(f.channel)
            return None
        ch = self.channels.get(f.channel)
        if ch is None and f.channel > self.last_opened:
            raise link.LinkError(f"{link.NAMES[f.type]} frame for channel {f.channel}, which was never opened")
        return ch

    def open_channel(self, n: int) -> None:
        if n <= self.last_opened:
            raise link.LinkError(f"OPEN for channel {n}: channel ids must increase (last {self.last_opened})")
        self.last_opened = n
        if sum(len(lk.channels) for lk in self.server.links | {self}) >= self.limits_host.clients:
            log.warning("%s: client %d refused: VM is at its limit of %d clients", self.name, n,
                        self.limits_host.clients)
            audit("limit_hit", vm=self.vm, client=n, limit="clients", value=self.limits_host.clients)
            err = display_error(1, NO_MEMORY, f"wlproxy: too many clients for VM {self.vm}")
            self.writer.send(n, link.header(link.DATA, n, len(err)) + err)
            self.writer.send(n, link.close_frame(n, 1, "too many clients"))
            return
        try:
            sock = connect_display(self.server.display)
        except SocketError as e:
            log.error("%s: %s", self.name, e)
            self.writer.send_urgent(link.close_frame(n, 2, "the compositor is not reachable"))
            return
        self.channels[n] = HostChannel(self, n, sock)
        self.fast_add(self.channels[n])
        log.info("%s: client %d connected", self.name, n)

    def handle_frame(self, ch: HostChannel, f: link.Frame) -> None:
        if f.type == link.FD_SHM:
            key, size = link.parse_fd_shm(f.payload)
            ch.new_pool(key, size)
        elif f.type == link.SHM_FORGET:
            ch.forget_pool(link.u32(f.payload, "SHM_FORGET"))
        else:
            super().handle_frame(ch, f)

    def _pool(self, channel: int, key: int) -> HostPool | None:
        ch = self.channels.get(channel)
        if ch is None:
            if channel > self.last_opened:
                raise link.LinkError(f"SHM_DATA for channel {channel}, which was never opened")
            return None
        pool = ch.pools.get(key)
        if pool is None:
            raise link.LinkError(f"SHM_DATA for unknown pool {key} on channel {channel}")
        return pool

    def resolve_shm(self, channel: int, key: int, offset: int, length: int) -> memoryview | None:
        try:
            pool = self._pool(channel, key)
        except link.LinkError:
            return None  # the chunk event will report it
        return pool.region(offset, length) if pool is not None else None

    def shm_chunk(self, c: link.ShmChunk) -> None:
        pool = self._pool(c.channel, c.key)
        if pool is None:
            return
        dst = pool.region(c.offset, len(c.data))
        if dst is None:
            raise link.LinkError(f"SHM_DATA of {len(c.data)} bytes at {c.offset} is outside pool {c.key} "
                                 f"({pool.size} bytes)")
        dst[:] = c.data
        dst.release()

    def on_shutdown(self, reason: str) -> None:
        self.server.link_closed(self)


class HostServer:
    """One VM's host half: its policy, its links, its VM-wide usage."""

    def __init__(self, loop: Loop, sock: socket.socket, vm: str, display: str | None,
                 pol: policy.Policy | None = None):
        self.loop = loop
        self.sock = sock
        self.vm = vm
        self.display = display
        self.policy = pol or policy.default(vm)
        self.limits = self.policy.limits
        self.links: set[HostLink] = set()
        self.count = 0
        self.pool_bytes = 0  # shm pool bytes of all the VM's clients
        self.vm_objects = ffi.new("int64_t *")  # live objects of all the VM's clients (C: fl_account)
        self._caps: dict[str, int | None] = {}
        if is_listening(sock):
            loop.add_reader(sock.fileno(), self._accept)
        else:
            self._start(sock)

    @property
    def objects(self) -> int:
        return int(self.vm_objects[0])

    def global_cap(self, iface: str) -> int | None:
        """The version cap of ``iface`` for this VM's clients, or None: hidden.
        Only what the policy allows, the proxy can parse, and the link can carry."""
        if iface not in self._caps:
            from wlproxy.core.protocol import load

            proto = load()
            cap = self.policy.global_cap(iface)
            if cap is not None and (iface not in proto or not bridges.bridgeable(iface, proto)):
                cap = None
            if cap is not None:
                cap = min(cap, proto[iface].version)
            self._caps[iface] = cap
        return self._caps[iface]

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("accept failed: %s", e)
            return
        self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        self.count += 1
        if len(self.links) >= MAX_LINKS:
            log.warning("VM %s: link %d refused: %d links open", self.vm, self.count, len(self.links))
            audit("limit_hit", vm=self.vm, limit="links", value=MAX_LINKS)
            conn.close()
            return
        fd = accepted(conn)
        lk = HostLink(self, fd, self.count)
        if not lk.closed:
            self.links.add(lk)
            log.info("VM %s: link %d accepted", self.vm, self.count)

    def link_closed(self, lk: HostLink) -> None:
        self.links.discard(lk)


def compositor_globals(display: str | None, timeout: float = 5.0) -> dict[str, int]:
    """interface -> version of every global the compositor offers (one registry round trip)."""
    proto = default_tables().proto
    g_msg = proto["wl_registry"].message(EVENT, "global")
    sock = connect_display(display)
    try:
        sock.settimeout(timeout)
        sock.sendall(wire.encode(1, proto["wl_display"].message(REQUEST, "get_registry"), [2])[0] +
                     wire.encode(1, proto["wl_display"].message(REQUEST, "sync"), [3])[0])
        buf, out = b"", {}
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the compositor closed the connection")
            buf += chunk
            while len(buf) >= 8:
                obj, op, size = wire.header(buf)
                if size < 8 or len(buf) < size:
                    break
                if obj == 2 and op == 0:
                    _, iface, version = wire.decode(g_msg, buf[:size])
                    out[iface] = version
                elif obj == 3:
                    return out
                buf = buf[size:]
    finally:
        sock.close()


SECURITY_CONTEXT = "wp_security_context_manager_v1"


def check_security_context(pol: policy.Policy, display: str | None) -> None:
    """Report on the policy's ``security_context`` switch; refuse to run when it
    says ``require`` and no security context can be had."""
    if pol.security_context == "off":
        return
    try:
        offered = SECURITY_CONTEXT in compositor_globals(display)
    except (OSError, SocketError) as e:
        offered, why = False, f"cannot ask the compositor: {e}"
    else:
        why = "the compositor does not offer " + SECURITY_CONTEXT
    if offered:  # this build has no XML for it, so it cannot create the context
        why = f"the compositor offers {SECURITY_CONTEXT}, but this build of wlproxy cannot use it (no protocol XML)"
    audit("security_context_unavailable", vm=pol.vm, mode=pol.security_context, reason=why)
    if pol.security_context == "require":
        raise UserError(f"VM {pol.vm}: the policy requires a security context: {why}")
    log.warning("VM %s: running without a security context: %s", pol.vm, why)


def run(args: argparse.Namespace) -> int:
    check_not_root(args.allow_root)
    try:
        pol = policy.for_vm(args.vm, args.policy, args.vms_dir)
    except policy.PolicyError as e:
        raise UserError(str(e)) from None
    audit("policy_loaded", vm=pol.vm, source=pol.source or "defaults", tag=pol.tag, clipboard=pol.clipboard,
          security_context=pol.security_context, globals=len(pol.globals))
    for name in pol.unsafe_allowed():
        log.warning("VM %s: the policy allows %s, which is not safe for an untrusted VM", pol.vm, name)
    check_security_context(pol, args.display)
    try:
        ep = parse(args.listen, listening=True)
        sock = listen(ep)
    except (ValueError, SocketError) as e:
        raise UserError(str(e)) from None
    loop = Loop()
    short_slice(args.sched_slice)
    server = HostServer(loop, sock, args.vm, args.display, pol)
    log.info("VM %s: host half listening on %s, compositor %s", args.vm, ep, args.display or os.environ.get("WAYLAND_DISPLAY", "wayland-0"))
    loop.stop_on_signals()

    def ready() -> None:  # from the loop's first turn: listening, and handling signals
        told = notify.ready(args.ready_fd, f"listening on {ep}")
        if told:
            log.info("VM %s: readiness reported to %s", args.vm, ", ".join(told))
    loop.call_soon(ready)
    try:
        loop.run()
    finally:
        for lk in list(server.links):
            lk.shutdown("host half stopping", violation=False)
        sock.close()
        if ep.kind == "unix":
            try:
                os.unlink(ep.value)
            except FileNotFoundError:
                pass
    return 0
