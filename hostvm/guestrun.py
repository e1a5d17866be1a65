"""The guest's command runner, copied into the initramfs and run by its init.

It runs inside the guest (``chroot`` into the host root shared over 9p) with
``/usr/bin/python3``, so it uses only the standard library. The host passes
what to run on the kernel command line as ``wlproxy.run=<base64url(JSON)>``:

    {"argv": [...], "env": {...}, "cwd": "/",
     "guest": {"argv": [...], "env": {...}, "display": "wayland-0", "timeout": 20}}

``guest`` is optional: when present, that command (the guest half of wlproxy)
starts first, the runner waits until it listens on
``$XDG_RUNTIME_DIR/<display>``, then runs ``argv`` with ``WAYLAND_DISPLAY``
set. Base64 keeps the JSON free of spaces and quotes; nothing is ever passed
through a shell. The exit status of ``argv`` becomes the runner's status.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time

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
    payload = json.dumps(spec, separators=(",", ":")).encode()
    return PARAM + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_spec(cmdline: str) -> dict | None:
    """The spec from a kernel command line, or None when it has no ``wlproxy.run=``."""
    for word in cmdline.split():
        if word.startswith(PARAM):
            data = word[len(PARAM):]
            spec = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
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


def wait_listening(path: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a Unix socket at ``path`` accepts connections (or ``proc`` dies)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"guest half exited with status {proc.returncode} before listening")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"guest half did not listen on {path} within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


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


def run(spec: dict, base_env: dict[str, str] | None = None) -> int:
    """Run the spec's command (after its guest half, if any); return its exit status."""
    env = {**(BASE_ENV if base_env is None else base_env), **spec.get("env", {})}
    guest_proc = None
    guest = spec.get("guest")
    try:
        os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
        if guest is not None:
            display = guest.get("display", "wayland-0")
            genv = {**env, **guest.get("env", {})}
            log("starting guest half: " + _show(guest["argv"]))
            guest_proc = subprocess.Popen(guest["argv"], env=genv, cwd="/")
            wait_listening(os.path.join(genv["XDG_RUNTIME_DIR"], display), guest_proc,
                           float(guest.get("timeout", 20)))
            env["WAYLAND_DISPLAY"] = display
        log("running: " + _show(spec["argv"]))
        result = subprocess.run(spec["argv"], env=env, cwd=spec.get("cwd", "/"))
        return status_of(result.returncode)
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
