"""Man pages and shell completion, generated from the argparse parsers and the policy schema.

``python -m wlproxy.tools.manpage DIR`` writes ``DIR/man/wlproxy.1``, ``DIR/man/wlproxy-policy.5``,
``DIR/completions/wlproxy`` (bash) and ``DIR/completions/_wlproxy`` (zsh).  The copies checked in
under ``wlproxy/share`` are installed with the package; tests/test_cli_conventions.py checks that
they match what this module generates now.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wlproxy import __version__
from wlproxy.cli import EXIT_STATUS, build_parser
from wlproxy.core import policy

SHARE = Path(__file__).resolve().parent.parent / "share"


def _roff(text: str) -> str:
    """Escape ``text`` for roff: backslashes, and a leading dot or quote."""
    text = " ".join(str(text).split()).replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _help(a: argparse.Action) -> str:
    h = a.help or ""
    if "%(" in h:
        try:
            h = h % {"default": a.default, "prog": "wlproxy", "choices": a.choices}
        except (KeyError, TypeError, ValueError):
            pass
    return h


def _option_lines(p: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
            continue
        if a.option_strings:
            metavar = "" if a.nargs == 0 else " " + (a.metavar or (
                "{" + ",".join(map(str, a.choices)) + "}" if a.choices else a.dest.upper()))
            names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in a.option_strings)
            out += [".TP", names + (f" \\fI{_roff(metavar.strip())}\\fR" if metavar else "")]
        else:
            out += [".TP", f"\\fI{_roff(a.metavar or a.dest)}\\fR"]
        out.append(_roff(_help(a)))
    return out


def _subcommands(p: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return list(a.choices.items())
    return []


def _usage(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_usage().removeprefix("usage:").split())


def _section(p: argparse.ArgumentParser, name: str, level: int) -> list[str]:
    out = [".SS " + _roff(name), ".PP", f"\\fB{_roff(_usage(p))}\\fR", ".PP", _roff(p.description or "")]
    out += _option_lines(p)
    for sub, sp in _subcommands(p):
        out += _section(sp, f"{name} {sub}", level + 1)
    return out


def man1() -> str:
    """wlproxy(1): every subcommand and option, from the parsers."""
    p = build_parser()
    out = [f'.TH WLPROXY 1 "" "wlproxy {__version__}" "User Commands"', ".SH NAME",
           "wlproxy \\- a filtering Wayland proxy for app VMs", ".SH SYNOPSIS",
           "\\fBwlproxy\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]", ".SH DESCRIPTION",
           _roff(p.description or ""), ".PP",
           "The logging options (\\fB\\-v\\fR, \\fB\\-\\-log\\-format\\fR, \\fB\\-\\-audit\\-log\\fR) are "
           "accepted before the command and after it.", ".PP", "Commands:"]
    for sub, sp in _subcommands(p):
        out += [".TP", f"\\fB{sub}\\fR", _roff(sp.description or "")]
    out += [".SH OPTIONS", *_option_lines(p)]
    out += [".SH COMMANDS"]
    for sub, sp in _subcommands(p):
        out += [".SS " + _roff(f"wlproxy {sub}"), ".PP", f"\\fB{_roff(_usage(sp))}\\fR", ".PP",
                _roff(sp.description or "")]
        out += _option_lines(sp)
        for sub2, sp2 in _subcommands(sp):
            out += _section(sp2, f"wlproxy {sub} {sub2}", 2)
    out += [".SH EXIT STATUS"]
    for code, what in EXIT_STATUS.items():
        out += [".TP", f"\\fB{code}\\fR", _roff(what)]
    out += [".SH ENVIRONMENT", ".TP", "\\fBWAYLAND_DISPLAY\\fR",
            "The host half's compositor (unless \\-\\-display); the guest half's own socket name "
            "(unless \\-\\-socket).", ".TP", "\\fBXDG_CONFIG_HOME\\fR, \\fBXDG_CONFIG_DIRS\\fR",
            "Where policies and VM definitions are looked up; see \\fBwlproxy\\-policy\\fR(5).", ".TP",
            "\\fBNOTIFY_SOCKET\\fR",
            "The host half sends READY=1 there once it listens (systemd Type=notify).", ".TP",
            "\\fBWLPROXY_ALLOW_ROOT\\fR", "Set to 1: the host half runs as root (as \\-\\-allow\\-root).",
            ".SH SEE ALSO", "\\fBwlproxy\\-policy\\fR(5), \\fBweston\\fR(1)", ""]
    return "\n".join(out)


def man5() -> str:
    """wlproxy-policy(5): the TOML format, from the policy module's schema."""
    lim = policy.Limits()
    out = [f'.TH WLPROXY-POLICY 5 "" "wlproxy {__version__}" "File Formats"', ".SH NAME",
           "wlproxy\\-policy \\- per\\-VM policy of the wlproxy host half", ".SH LOCATION"]
    out += [_roff(para) + "\n.PP" for para in policy.LOOKUP_DOC.strip().split("\n\n")]
    out += [".SH DESCRIPTION", _roff("A TOML file. Every key is optional; an unknown key, a bad value "
                                     "or an unknown interface name is an error naming the file, the line "
                                     "and the key (wlproxy policy check FILE)."),
            ".SH TOP-LEVEL KEYS", ".TP", "\\fBtag\\fR = \\fISTRING\\fR",
            _roff("Window title prefix \"[tag] \" and app_id namespace \"tag.\". Default: the VM name."),
            ".TP", "\\fBclipboard\\fR = " + " | ".join(f'"{m}"' for m in policy.CLIPBOARD_MODES),
            _roff("Which way clipboard and drag-and-drop data may flow. Default: \"both\"."),
            ".TP", "\\fBsecurity_context\\fR = " + " | ".join(f'"{m}"' for m in policy.SECURITY_CONTEXT_MODES),
            _roff("Whether to ask weston for a wp_security_context_v1 (require: refuse to run without). "
                  "Default: \"off\"."),
            ".SH [globals]", ".TP", '\\fBbaseline\\fR = "default" | "none"',
            _roff("The starting set: the safe default set below, or nothing."), ".TP",
            "\\fBallow\\fR = { \\fIinterface\\fR = \\fIversion\\fR, ... }",
            _roff("Offer these interfaces too, up to the version given. Interfaces not safe for an untrusted "
                  "VM are allowed with a warning: " + ", ".join(sorted(policy.UNSAFE_GLOBALS)) + ". Never "
                  "offered: " + ", ".join(sorted(policy.FORBIDDEN_GLOBALS)) + " and weston_*."),
            ".TP", "\\fBdeny\\fR = [ \\fIinterface\\fR, ... ]",
            _roff("Hide these interfaces of the baseline. Each must be an interface wlproxy knows."),
            ".PP", "The default set, with its version caps:", ".RS"]
    out += [f"{_roff(k)} {v}\n.br" for k, v in policy.DEFAULT_GLOBALS.items()]
    out += [".RE", ".SH [limits]",
            _roff("Integers; sizes may also be strings with a unit: B, KiB, MiB, GiB, TiB (powers of 1024) "
                  "or kB, MB, GB, TB (powers of 1000), e.g. \"256 MiB\".")]
    for k in policy.Limits.CONFIGURABLE:
        out += [".TP", f"\\fB{k}\\fR", _roff(f"Default {getattr(lim, k)}, at most {policy.Limits.MAXIMA[k]}"
                                             + (f", at least {policy.Limits.MINIMA[k]}" if k in policy.Limits.MINIMA
                                                else "") + ".")]
    out += [".SH EXAMPLE", ".nf"] + [_roff(ln) if ln.strip() else "" for ln in policy.EXAMPLE.strip().splitlines()]
    out += [".fi", ".SH SEE ALSO", "\\fBwlproxy\\fR(1)", ""]
    return "\n".join(out)


def _words(p: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    subs = [s for s, _ in _subcommands(p)]
    opts = [o for a in p._actions for o in a.option_strings]
    return subs, opts


def _paths(p: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, list[str], list[str]]]:
    subs, opts = _words(p)
    out = [(prefix, subs, opts)]
    for s, sp in _subcommands(p):
        out += _paths(sp, f"{prefix} {s}".strip())
    return out


def bash() -> str:
    """A bash completion script: subcommands and options at each level."""
    cases = []
    for path, subs, opts in _paths(build_parser()):
        cases.append(f'    "{path}") words="{" ".join(subs + opts)}" ;;')
    return "\n".join([
        "# bash completion for wlproxy (generated by wlproxy.tools.manpage)",
        "_wlproxy() {",
        "  local cur=${COMP_WORDS[COMP_CWORD]} path='' w i",
        "  for ((i = 1; i < COMP_CWORD; i++)); do",
        "    w=${COMP_WORDS[i]}",
        "    case $w in -*) ;; *) case \" $(_wlproxy_words \"$path\") \" in *\" $w \"*) path=${path:+$path }$w ;; esac ;; esac",
        "  done",
        "  COMPREPLY=($(compgen -W \"$(_wlproxy_words \"$path\")\" -- \"$cur\"))",
        "  [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- \"$cur\"))",
        "}",
        "_wlproxy_words() {",
        "  local words=''",
        "  case $1 in",
        *cases,
        "  esac",
        "  echo \"$words\"",
        "}",
        "complete -F _wlproxy wlproxy",
        ""])


def zsh() -> str:
    """A zsh completion function (the same words as the bash script)."""
    cases = []
    for path, subs, opts in _paths(build_parser()):
        cases.append(f'    "{path}") cands=({" ".join(subs + opts)}) ;;')
    return "\n".join([
        "#compdef wlproxy",
        "# zsh completion for wlproxy (generated by wlproxy.tools.manpage)",
        "_wlproxy_words() {",
        "  case $1 in",
        *cases,
        "    *) cands=() ;;",
        "  esac",
        "}",
        "_wlproxy() {",
        "  local path='' w",
        "  local -a cands",
        "  for w in \"${(@)words[2,CURRENT-1]}\"; do",
        "    [[ $w == -* ]] && continue",
        "    _wlproxy_words \"$path\"",
        "    (( ${cands[(Ie)$w]} )) && path=${path:+$path }$w",
        "  done",
        "  _wlproxy_words \"$path\"",
        "  compadd -a cands || _files",
        "}",
        "_wlproxy \"$@\"",
        ""])


def generate() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: fix it
    try:
        return {"man/wlproxy.1": man1(), "man/wlproxy-policy.5": man5(),
                "completions/wlproxy": bash(), "completions/_wlproxy": zsh()}
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dest = Path(argv[0]) if argv else SHARE
    for rel, text in generate().items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
        print(dest / rel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
