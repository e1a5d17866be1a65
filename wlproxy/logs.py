"""Logging setup: text or JSON lines, and the audit logger.

Log lines carry what guests send (interface names, titles, errors), so the text
format is built so that no value can forge a line or a field: the message and
every value are escaped (no raw newline or control character), and any of them
that holds a space, ``=``, a quote or a backslash is written in double quotes.
A ``key=value`` parser therefore only ever sees the fields the code wrote.
JSON lines are escaped by JSON itself.

Audit events (security decisions) always go out, at info when routine
(``policy_loaded``) and at warning when something was denied; ``--audit-log FILE``
sends them to a file of their own instead of stderr.  Under systemd (stderr
connected to the journal, ``$JOURNAL_STREAM``) text lines start with a syslog
priority ``<N>`` and leave the time stamp to the journal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

AUDIT_LOGGER = "wlproxy.audit"

# Audit events that record normal operation; every other event is a denial or a failure.
ROUTINE_EVENTS = frozenset({"policy_loaded", "vm_started", "vm_stopped", "vm_exited", "host_half_restarted"})

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BARE = re.compile(r'[^\s"=\\]+')
_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def escape(text: str) -> str:
    """``text`` with backslash, quote and every unprintable character escaped (one line, always)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)


def quote(text: str) -> str:
    """``text`` as one token: bare when it is plain, else escaped in double quotes."""
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return '"' + escape(text) + '"'


def _value(v: object) -> str:
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, (bool, int, float)) or v is None:
        return str(v)
    return quote(json.dumps(v, default=str))


def _key(k: str) -> str:
    return k if _KEY.fullmatch(k) else re.sub(r"[^A-Za-z0-9_.-]", "_", k) or "_"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"audit": {...}}`` fields are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if audit:
            out.update(audit)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``, one line whatever the message and values hold."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if self.journal:
            head = f"<{_SYSLOG.get(record.levelno, 6)}>{record.name}:"
        else:
            t = time.strftime("%H:%M:%S", time.localtime(record.created))
            head = f"{t}.{int(record.msecs):03d} {record.levelname.lower():7s} {record.name}:"
        parts = [head, quote(record.getMessage())]
        audit = getattr(record, "audit", None)
        if audit:
            parts += [f"{_key(str(k))}={_value(v)}" for k, v in audit.items()]
        if record.exc_info:
            parts.append(f"exc={quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _stderr_is_journal() -> bool:
    """Is stderr the journal's stream (systemd sets ``$JOURNAL_STREAM`` to its device:inode)?"""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def _formatter(fmt: str, journal: bool = False) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter(journal)


def setup_logging(verbose: int = 0, fmt: str = "text", audit_log: str | None = None) -> None:
    """Log to stderr at warning (``verbose`` 1: info, 2: debug); audit events always, to
    ``audit_log`` when given (appended to, created owner-only)."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt, _stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The audit trail is always on: it records security decisions.
    alog = logging.getLogger(AUDIT_LOGGER)
    alog.setLevel(logging.INFO)
    for h in list(alog.handlers):
        alog.removeHandler(h)
        h.close()
    alog.propagate = True
    if audit_log:
        fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fh = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
        fh.setFormatter(_formatter(fmt))
        alog.addHandler(fh)
        alog.propagate = False


def audit(event: str, **fields: object) -> None:
    """Write one machine-readable audit line (denied binds, violations, limits, drops);
    routine events (:data:`ROUTINE_EVENTS`) at info, the rest at warning."""
    level = logging.INFO if event in ROUTINE_EVENTS else logging.WARNING
    logging.getLogger(AUDIT_LOGGER).log(level, event, extra={"audit": {"event": event, **fields}})
