"""The guest's command runner, copied into the initramfs and run by its init.

It runs inside the guest (``chroot`` into the host root shared over 9p) with
``/usr/bin/python3``, so it uses only the standard library. The host passes
what to run on the kernel command line as ``wlproxy.run=<base64url(zlib(JSON))>``:

    {"argv": [...], "env": {...}, "cwd": "/",
     "guest": {"argv": [...], "env": {...}, "display": "wayland-0", "timeout": 20}}

``guest`` is optional: when present, that command (the guest half of wlproxy)
starts first, the runner waits until it listens on
``$XDG_RUNTIME_DIR/<display>``, then runs ``argv`` with ``WAYLAND_DISPLAY``
set. Base64 keeps the JSON free of spaces and quotes (zlib keeps it short:
the whole command line is limited to 2048 bytes); nothing is ever passed
through a shell. The exit status of ``argv`` becomes the runner's status.

A press of the (ACPI) power button, which is how the host asks the VM to stop
(QMP ``system_powerdown``), terminates the command and the guest half.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

PARAM = "wlproxy.run="
MAX_CMDLINE = 2048  # x86 COMMAND_LINE_SIZE
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "XDG_RUNTIME_DIR": "/run/user/0",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def encode_spec(spec: dict) -> str:
    """The kernel command line parameter carrying ``spec``."""
    payload = zlib.compress(json.dumps(spec, separators=(",", ":")).encode(), 9)
    return PARAM + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_spec(cmdline: str) -> dict | None:
    """The spec from a kernel command line, or None when it has no ``wlproxy.run=``."""
    for word in cmdline.split():
        if word.startswith(PARAM):
            data = word[len(PARAM):]
            try:
                payload = zlib.decompress(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            except zlib.error as e:
                raise ValueError(f"not zlib data: {e}") from e
            spec = json.loads(payload)
            check_spec(spec)
            return spec
    return None


def check_spec(spec: object) -> None:
    """Raise ValueError unless ``spec`` has the shape described above."""
    def argv_ok(argv: object) -> bool:
        return isinstance(argv, list) and bool(argv) and all(isinstance(a, str) for a in argv)

    def env_ok(env: object) -> bool:
        return isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())

    if not isinstance(spec, dict) or not argv_ok(spec.get("argv")):
        raise ValueError("spec needs a non-empty 'argv' list of strings")
    if not env_ok(spec.get("env", {})) or not isinstance(spec.get("cwd", "/"), str):
        raise ValueError("spec 'env' must map strings to strings, 'cwd' must be a string")
    guest = spec.get("guest")
    if guest is not None:
        if not isinstance(guest, dict) or not argv_ok(guest.get("argv")) or not env_ok(guest.get("env", {})):
            raise ValueError("spec 'guest' needs an 'argv' list of strings and optional 'env'")
        display = guest.get("display", "wayland-0")
        if not isinstance(display, str) or "/" in display or not display:
            raise ValueError("spec 'guest.display' must be a plain socket name")


def log(msg: str) -> None:
    print(f"wlproxy-run: {msg}", file=sys.stderr, flush=True)


def unix_listening(path: str, proc_net_unix: str = "/proc/net/unix") -> bool | None:
    """Whether a listening Unix socket is bound at ``path`` (None: /proc/net/unix unreadable).

    Checked without connecting, so the guest half sees no probe client.
    """
    try:
        with open(proc_net_unix) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listen() was called
            bound = fields[7]
            if bound == path or (not bound.startswith("/") and path.endswith("/" + bound)):
                return True
    return False


def wait_listening(path: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a Unix socket at ``path`` listens (or ``proc`` dies, or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"guest half exited with status {proc.returncode} before listening")
        listening = unix_listening(path)
        if listening is None:  # no /proc: fall back to connecting
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                listening = s.connect_ex(path) == 0
        if listening:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"guest half did not listen on {path} within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


INPUT_EVENT = struct.Struct("llHHi")  # struct input_event on 64-bit Linux
EV_KEY, KEY_POWER = 1, 116


def watch_power_button(on_press, devices: str = "/dev/input/event*") -> threading.Thread | None:
    """Call ``on_press()`` (from a thread) when an input device reports KEY_POWER pressed."""
    fds = []
    for path in glob.glob(devices):
        try:
            fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
    if not fds:
        return None

    def loop() -> None:
        while True:
            ready, _, _ = select.select(fds, [], [])
            for fd in ready:
                try:
                    data = os.read(fd, INPUT_EVENT.size * 64)
                except BlockingIOError:
                    continue
                for off in range(0, len(data) - INPUT_EVENT.size + 1, INPUT_EVENT.size):
                    _, _, kind, code, value = INPUT_EVENT.unpack_from(data, off)
                    if kind == EV_KEY and code == KEY_POWER and value == 1:
                        on_press()

    thread = threading.Thread(target=loop, name="power-button", daemon=True)
    thread.start()
    return thread


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def status_of(returncode: int) -> int:
    """A shell-style status: 128+N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _show(argv: list[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def run(spec: dict, base_env: dict[str, str] | None = None, power_button: str = "/dev/input/event*") -> int:
    """Run the spec's command (after its guest half, if any); return its exit status."""
    env = {**(BASE_ENV if base_env is None else base_env), **spec.get("env", {})}
    guest_proc = None
    guest = spec.get("guest")
    procs: list[subprocess.Popen] = []
    stopping = threading.Event()

    def power_pressed() -> None:
        if not stopping.is_set():
            stopping.set()
            log("power button pressed: stopping")
            for p in reversed(procs):
                threading.Thread(target=stop, args=(p,), daemon=True).start()

    watch_power_button(power_pressed, power_button)
    try:
        os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
        if guest is not None:
            display = guest.get("display", "wayland-0")
            genv = {**env, **guest.get("env", {})}
            log("starting guest half: " + _show(guest["argv"]))
            guest_proc = subprocess.Popen(guest["argv"], env=genv, cwd="/")
            procs.append(guest_proc)
            wait_listening(os.path.join(genv["XDG_RUNTIME_DIR"], display), guest_proc,
                           float(guest.get("timeout", 20)))
            env["WAYLAND_DISPLAY"] = display
        log("running: " + _show(spec["argv"]))
        with subprocess.Popen(spec["argv"], env=env, cwd=spec.get("cwd", "/")) as client:
            procs.append(client)
            if stopping.is_set():
                stop(client)
            return status_of(client.wait())
    except (OSError, RuntimeError) as e:
        log(f"error: {e}")
        return 127 if isinstance(e, FileNotFoundError) else 126
    finally:
        if guest_proc is not None:
            stop(guest_proc)
            log(f"guest half exited with status {status_of(guest_proc.returncode)}")


def main() -> int:
    with open("/proc/cmdline") as f:
        cmdline = f.read()
    try:
        spec = decode_spec(cmdline)
    except ValueError as e:
        log(f"bad {PARAM} parameter: {e}")
        return 2
    if spec is None:
        log(f"nothing to run: no {PARAM} on the kernel command line")
        return 2
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
