"""cloud-hypervisor's REST API (HTTP/1.1 over a Unix socket), through ``http.client``."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger("hostvm.chapi")

API_PREFIX = "/api/v1/"


class ChError(Exception):
    """Talking to cloud-hypervisor failed."""


class ApiUnavailable(ChError):
    """The API socket is missing, refuses connections or breaks off."""


class ApiError(ChError):
    """The API answered with an error status; ``messages`` is its JSON array of messages."""

    def __init__(self, method: str, endpoint: str, status: int, reason: str, messages: list[str]) -> None:
        self.method, self.endpoint, self.status, self.reason = method, endpoint, status, reason
        self.messages = messages
        detail = ": ".join(messages) if messages else "no details given"
        super().__init__(f"cloud-hypervisor refused {method} {endpoint} ({status} {reason}): {detail}")


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a Unix stream socket."""

    def __init__(self, socket_path: str | Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def error_messages(body: bytes) -> list[str]:
    """The messages of an error body: a JSON array of strings, else the text as one message."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return [text]
    if isinstance(data, list):
        return [m if isinstance(m, str) else json.dumps(m) for m in data]
    return [data if isinstance(data, str) else json.dumps(data)]


class ChClient:
    """One request per connection to the API socket at ``socket_path``."""

    def __init__(self, socket_path: str | Path, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def request(self, method: str, endpoint: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON reply (None when there is none)."""
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, API_PREFIX + endpoint, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ApiUnavailable(f"cloud-hypervisor API at {self.socket_path}: {method} {endpoint} failed: "
                                 f"{e.__class__.__name__}: {e}") from e
        finally:
            conn.close()
        log.debug("%s %s -> %d", method, endpoint, resp.status)
        if resp.status >= 300:
            raise ApiError(method, endpoint, resp.status, resp.reason, error_messages(raw))
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ChError(f"cloud-hypervisor: {method} {endpoint}: reply is not JSON: {raw[:200]!r}") from e

    def ping(self) -> dict[str, Any]:
        return self.request("GET", "vmm.ping")

    def create(self, config: dict[str, Any]) -> None:
        self.request("PUT", "vm.create", config)

    def boot(self) -> None:
        self.request("PUT", "vm.boot")

    def info(self) -> dict[str, Any]:
        return self.request("GET", "vm.info")

    def shutdown(self) -> None:
        self.request("PUT", "vm.shutdown")

    def vmm_shutdown(self) -> None:
        self.request("PUT", "vmm.shutdown")
