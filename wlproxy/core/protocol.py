"""The protocol model: interfaces, requests and events loaded from ``protocols/*.xml``.

Everything the codec and the policy know about messages comes from here; there
are no hand-written per-message tables.
"""

from __future__ import annotations

import functools
import importlib.resources
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ARG_TYPES = {"int": 1, "uint": 2, "fixed": 3, "string": 4, "object": 5, "new_id": 6, "array": 7, "fd": 8}
REQUEST, EVENT = 0, 1


@dataclass(frozen=True)
class Arg:
    name: str
    type: str
    interface: str | None = None
    allow_null: bool = False
    enum: str | None = None


@dataclass(frozen=True)
class Message:
    name: str
    opcode: int
    args: tuple[Arg, ...]
    since: int = 1
    destructor: bool = False

    @property
    def nfds(self) -> int:
        return sum(a.type == "fd" for a in self.args)


@dataclass
class Interface:
    name: str
    version: int
    protocol: str
    requests: list[Message] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    index: int = -1

    def messages(self, direction: int) -> list[Message]:
        return self.requests if direction == REQUEST else self.events

    def message(self, direction: int, name: str) -> Message:
        for m in self.messages(direction):
            if m.name == name:
                return m
        kind = "request" if direction == REQUEST else "event"
        raise KeyError(f"{self.name} has no {kind} {name!r}")


def protocol_dir() -> Path:
    """Where the shipped XML lives (inside the installed package, or the source tree)."""
    try:
        p = Path(str(importlib.resources.files("wlproxy.protocols")))
        if any(p.glob("*.xml")):
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "protocols"


def _parse_message(el: ET.Element, opcode: int) -> Message:
    args = []
    for a in el.findall("arg"):
        t = a.get("type", "")
        if t not in ARG_TYPES:
            raise ValueError(f"unknown argument type {t!r} in {el.get('name')}")
        args.append(Arg(a.get("name", ""), t, a.get("interface"), a.get("allow-null") == "true", a.get("enum")))
    return Message(el.get("name", ""), opcode, tuple(args), int(el.get("since", "1")),
                   el.get("type") == "destructor")


def parse_file(path: Path) -> list[Interface]:
    root = ET.parse(path).getroot()
    out = []
    for iel in root.findall("interface"):
        iface = Interface(iel.get("name", ""), int(iel.get("version", "1")), root.get("name", path.stem))
        iface.requests = [_parse_message(m, i) for i, m in enumerate(iel.findall("request"))]
        iface.events = [_parse_message(m, i) for i, m in enumerate(iel.findall("event"))]
        for e in iel.findall("enum"):
            iface.enums[e.get("name", "")] = {
                en.get("name", ""): int(en.get("value", "0"), 0) for en in e.findall("entry")}
        out.append(iface)
    return out


class Protocol:
    """All interfaces from a set of XML files, indexed by name and by number."""

    def __init__(self, paths: list[Path]):
        by_name: dict[str, Interface] = {}
        for path in sorted(paths):
            for iface in parse_file(path):
                if iface.name in by_name:
                    raise ValueError(f"interface {iface.name} defined twice ({path})")
                by_name[iface.name] = iface
        self.interfaces: list[Interface] = sorted(by_name.values(), key=lambda i: i.name)
        for i, iface in enumerate(self.interfaces):
            iface.index = i
        self.by_name = by_name
        for iface in self.interfaces:  # every referenced interface must exist
            for m in iface.requests + iface.events:
                for a in m.args:
                    if a.interface and a.interface not in by_name:
                        raise ValueError(f"{iface.name}.{m.name} refers to unknown interface {a.interface}")

    def __getitem__(self, name: str) -> Interface:
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def children(self, name: str) -> set[str]:
        """Interfaces reachable from ``name`` through new_id arguments (``name`` included)."""
        seen = {name}
        todo = [name]
        while todo:
            iface = self.by_name[todo.pop()]
            for m in iface.requests + iface.events:
                for a in m.args:
                    if a.type == "new_id" and a.interface and a.interface not in seen:
                        seen.add(a.interface)
                        todo.append(a.interface)
        return seen


@functools.cache
def load(directory: str | None = None) -> Protocol:
    """The protocol model from every XML file in ``directory`` (default: the shipped set)."""
    d = Path(directory) if directory else protocol_dir()
    paths = list(d.glob("*.xml"))
    if not paths:
        raise FileNotFoundError(f"no protocol XML found in {d}")
    return Protocol(paths)
