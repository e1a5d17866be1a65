"""Every request hostvm sends to cloud-hypervisor, checked against the official OpenAPI spec.

Bodies are validated with jsonschema over the spec's components (``$ref``s resolved in place);
"strict" also forbids properties the spec does not define, so no invented VmConfig field
passes. A tiny HTTP server on a Unix socket records what the client sends and plays back
error replies: it tests the client, not cloud-hypervisor.
"""

from __future__ import annotations

import copy
import http.server
import json
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_hostvm_common import StandinHypervisor, make_vm, own_tmp, require_ch_spec, short_tmpdir  # noqa: E402,F401

from wlproxy.vm import vmdef  # noqa: E402
from wlproxy.vm.chapi import ApiError, ApiUnavailable, ChClient, UnixHTTPConnection, error_messages  # noqa: E402
from wlproxy.vm.cloudhv import CloudHypervisor, vm_config  # noqa: E402
from wlproxy.vm.hypervisor import HypervisorError  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402

@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(require_ch_spec().read_text())


def _forbid_extra(node: Any) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            _forbid_extra(v)
    elif isinstance(node, list):
        for v in node:
            _forbid_extra(v)


def validator(spec: dict[str, Any], schema: dict[str, Any], strict: bool = True) -> jsonschema.Draft4Validator:
    """A validator for ``schema`` (often just a ``$ref``) with the spec's components beside it."""
    components = copy.deepcopy(spec["components"])
    schema = copy.deepcopy(schema)
    if strict:
        _forbid_extra(components)
        _forbid_extra(schema)
    return jsonschema.Draft4Validator({**schema, "components": components})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- VmConfig bodies ------------------------------------------------------------------------------

def _config(own_tmp: Path, full: bool) -> dict[str, Any]:
    make_vm(own_tmp / "vms", "appvm", full=full, disks=2 if full else 1)
    vm = vmdef.load(own_tmp / "vms", "appvm")
    return vm_config(vm, RunPaths(Path("/run/vm"), "appvm"))


def test_minimal_vm_config_matches_spec(spec: dict[str, Any], own_tmp: Path) -> None:
    body = _config(own_tmp, full=False)
    validator(spec, _ref("VmConfig")).validate(body)
    assert body["payload"] == {"kernel": str(own_tmp / "vms/appvm/vmlinux"), "cmdline": vmdef.DEFAULT_CMDLINE}
    assert body["memory"] == {"size": 1 << 30, "shared": True}
    assert body["cpus"] == {"boot_vcpus": 1, "max_vcpus": 1}
    assert body["disks"] == [{"path": str(own_tmp / "vms/appvm/blk/disk0.img"), "readonly": True}]
    assert body["vsock"] == {"cid": 3, "socket": "/run/vm/appvm/vsock"}
    assert body["serial"] == {"mode": "File", "file": "/run/vm/appvm.log"}
    assert body["console"] == {"mode": "Pty"}


def test_vm_config_with_every_optional_file_matches_spec(spec: dict[str, Any], own_tmp: Path) -> None:
    body = _config(own_tmp, full=True)
    validator(spec, _ref("VmConfig")).validate(body)
    assert body["payload"]["initramfs"] == str(own_tmp / "vms/appvm/initramfs")
    assert body["payload"]["cmdline"] == "console=hvc0 quiet"
    assert body["memory"] == {"size": 512 << 20, "shared": True}
    assert body["cpus"] == {"boot_vcpus": 2, "max_vcpus": 2}
    assert all(d["readonly"] is True for d in body["disks"]) and len(body["disks"]) == 2
    # providers/net is recorded (state, status, audit), not sent: VmConfig has no field for it
    assert "sys-net" not in json.dumps(body)


def test_strict_validation_rejects_invented_fields(spec: dict[str, Any], own_tmp: Path) -> None:
    """The check above can fail: an unknown field, a list vsock or cid < 3 are all rejected."""
    v = validator(spec, _ref("VmConfig"))
    good = _config(own_tmp, full=True)
    for bad in ({**good, "net_providers": ["sys-net"]},
                {**good, "vsock": [good["vsock"]]},
                {**good, "vsock": {"cid": 2, "socket": "/x"}},
                {**good, "memory": {**good["memory"], "size": "1G"}},
                {**good, "serial": {"mode": "Logfile"}}):
        assert list(v.iter_errors(bad)), bad
    lenient = validator(spec, _ref("VmConfig"), strict=False)
    assert not list(lenient.iter_errors({**good, "net_providers": ["sys-net"]}))


# -- what goes over the wire ----------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_FakeApi"

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "content_type": self.headers.get("Content-Type"), "body": body})
        endpoint = self.path.removeprefix("/api/v1/")
        status, reply = self.server.replies.get((self.command, endpoint), (204, None))
        data = b"" if reply is None else reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = _serve


class _FakeApi(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[tuple[str, str], tuple[int, Any]] = {}


PING = {"version": "v41.0", "build_version": "v41.0", "pid": 1234, "features": ["kvm"]}


@pytest.fixture
def api(own_tmp: Path) -> Iterator[_FakeApi]:
    d = short_tmpdir()
    server = _FakeApi(d / "vmm")
    t = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()
    (d / "vmm").unlink(missing_ok=True)
    d.rmdir()


def _check_against_spec(spec: dict[str, Any], requests: list[dict[str, Any]]) -> None:
    for req in requests:
        assert req["path"].startswith("/api/v1/"), req
        endpoint = "/" + req["path"].removeprefix("/api/v1/")
        op = spec["paths"].get(endpoint, {}).get(req["method"].lower())
        assert op is not None, f"{req['method']} {endpoint} is not in the spec"
        if "requestBody" in op:
            assert req["content_type"] == "application/json"
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            validator(spec, schema).validate(json.loads(req["body"]))
        else:
            assert req["body"] == b"", f"{endpoint} takes no body, got {req['body']!r}"


def _info(state: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"config": config, "state": state}


def test_start_and_stop_requests_match_spec(spec: dict[str, Any], api: _FakeApi, own_tmp: Path) -> None:
    """The whole request sequence of the cloud-hypervisor backend: ping, create, boot, info, stops."""
    make_vm(own_tmp / "vms", "appvm", full=True)
    vm = vmdef.load(own_tmp / "vms", "appvm")
    api_path = Path(api.server_address)
    paths = RunPaths(api_path.parent.parent, api_path.parent.name)
    assert paths.api == api_path
    config = vm_config(vm, paths)
    api.replies[("GET", "vmm.ping")] = (200, PING)
    api.replies[("GET", "vm.info")] = (200, _info("Running", config))
    validator(spec, _ref("VmmPingResponse"), strict=False).validate(PING)
    validator(spec, _ref("VmInfo"), strict=False).validate(_info("Running", config))

    proc = StandinHypervisor(own_tmp).spawn(vm, paths)  # only something that stays alive meanwhile
    try:
        ch = CloudHypervisor()
        ch.boot(vm, paths, proc, timeout=5)
        assert ch.vm_state(paths) == "Running"
        ch.shutdown(paths, timeout=5)
    finally:
        proc.kill()
        proc.wait()
    sent = [(r["method"], r["path"]) for r in api.requests]
    assert sent == [("GET", "/api/v1/vmm.ping"), ("PUT", "/api/v1/vm.create"), ("PUT", "/api/v1/vm.boot"),
                    ("GET", "/api/v1/vm.info"), ("GET", "/api/v1/vm.info"), ("PUT", "/api/v1/vm.shutdown"),
                    ("PUT", "/api/v1/vmm.shutdown")]
    assert json.loads(api.requests[1]["body"]) == config
    _check_against_spec(spec, api.requests)


# -- error replies --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,endpoint,status,messages", [
    ("PUT", "vm.create", 400, ["Error from API", "Invalid disk configuration: path contains ','"]),
    ("PUT", "vm.boot", 404, ["Error from API", "The VM instance is not created"]),
    ("PUT", "vm.create", 409, ["Error from API", "The VM is already created"]),
    ("PUT", "vm.boot", 500, ["Error from API", "Error booting VM: Cannot load the kernel"]),
])
def test_error_replies_become_api_errors(api: _FakeApi, method: str, endpoint: str, status: int,
                                         messages: list[str]) -> None:
    api.replies[(method, endpoint)] = (status, messages)
    client = ChClient(api.server_address)
    with pytest.raises(ApiError) as ei:
        client.request(method, endpoint, {"payload": {}} if endpoint == "vm.create" else None)
    e = ei.value
    assert (e.status, e.messages, e.endpoint) == (status, messages, endpoint)
    assert str(e).startswith(f"cloud-hypervisor refused {method} {endpoint} ({status} ")
    assert str(e).endswith(": ".join(messages))


def test_vm_info_404_reads_as_not_created(api: _FakeApi) -> None:
    api.replies[("GET", "vm.info")] = (404, ["Error from API", "VM is not created"])
    paths = RunPaths(Path(api.server_address).parent.parent, Path(api.server_address).parent.name)
    assert CloudHypervisor().vm_state(paths) == "NotCreated"


def test_create_error_stops_the_boot_with_the_messages(api: _FakeApi, own_tmp: Path) -> None:
    make_vm(own_tmp / "vms", "appvm")
    vm = vmdef.load(own_tmp / "vms", "appvm")
    api.replies[("GET", "vmm.ping")] = (200, PING)
    api.replies[("PUT", "vm.create")] = (400, ["Error from API", "Memory size is too small"])
    paths = RunPaths(Path(api.server_address).parent.parent, Path(api.server_address).parent.name)
    proc = StandinHypervisor(own_tmp).spawn(vm, paths)
    try:
        with pytest.raises(HypervisorError, match=r"400 Bad Request\): Error from API: Memory size is too small"):
            CloudHypervisor().boot(vm, paths, proc, timeout=5)
    finally:
        proc.kill()
        proc.wait()
    assert [r["path"] for r in api.requests] == ["/api/v1/vmm.ping", "/api/v1/vm.create"]  # no boot after it


@pytest.mark.parametrize("body,expected", [
    (b'["a", "b"]', ["a", "b"]), (b"", []), (b"plain text\n", ["plain text"]),
    (b'"one message"', ["one message"]), (b'{"error": "x"}', ['{"error": "x"}']), (b'[1, "two"]', ["1", "two"]),
])
def test_error_body_shapes(body: bytes, expected: list[str]) -> None:
    assert error_messages(body) == expected


def test_unreachable_api(own_tmp: Path) -> None:
    with pytest.raises(ApiUnavailable, match="FileNotFoundError"):
        ChClient(own_tmp / "missing").ping()
    assert CloudHypervisor().vm_state(RunPaths(own_tmp, "nothing")) == "unreachable"


def test_connection_class_is_http_client(api: _FakeApi) -> None:
    """The transport is http.client's HTTPConnection, only connecting to a Unix path."""
    api.replies[("GET", "vmm.ping")] = (200, PING)
    conn = UnixHTTPConnection(api.server_address, timeout=5)
    conn.request("GET", "/api/v1/vmm.ping")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == PING
    conn.close()


def test_spawn_reports_missing_binary(own_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wlproxy.vm.hypervisor import HypervisorUnavailable
    monkeypatch.delenv("WLPROXY_CLOUD_HYPERVISOR", raising=False)
    make_vm(own_tmp / "vms", "appvm")
    vm = vmdef.load(own_tmp / "vms", "appvm")
    with pytest.raises(HypervisorUnavailable, match="cloud-hypervisor not found"):
        CloudHypervisor(str(own_tmp / "no-such-vmm")).spawn(vm, RunPaths(own_tmp, "appvm"))


def test_vmm_exit_before_api_is_reported(own_tmp: Path) -> None:
    """A VMM that dies before its API socket is up fails fast, not after the timeout."""
    make_vm(own_tmp / "vms", "appvm")
    vm = vmdef.load(own_tmp / "vms", "appvm")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(HypervisorError, match="exited with status 4 before it was ready"):
        CloudHypervisor().boot(vm, RunPaths(own_tmp, "appvm"), proc, timeout=30)
