"""``wlproxy policy check FILE`` and ``wlproxy policy show VM``."""

from __future__ import annotations

import argparse
import json
from wlproxy.core import policy
from wlproxy.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="policy_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="validate a policy file", description="Validate a policy file: "
                       "exit 0 if it can be used, else print the file, line and key at fault and exit 2.")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--vm", metavar="NAME", help="the VM it is for (default: from the file's place: "
                   "NAME/wlproxy.toml or NAME.toml)")
    s = sub.add_parser("show", help="print a VM's effective policy, defaults filled in",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print the effective policy of VM NAME, with every default filled in.\n\n"
                       + policy.LOOKUP_DOC)
    s.add_argument("vm", metavar="VM")
    s.add_argument("--policy", metavar="FILE", help="use this file instead of the lookup")
    s.add_argument("--vms-dir", metavar="DIR", help="look in this VMs directory only")
    s.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(args: argparse.Namespace) -> int:
    try:
        if args.policy_command == "check":
            vm = args.vm or policy.vm_of_file(args.file)
            if not policy.valid_vm_name(vm):
                vm = "vm"
            pol = policy.load_file(args.file, vm)
            print(f"{args.file}: OK (VM {pol.vm!r}, tag {pol.tag!r}, clipboard {pol.clipboard}, "
                  f"{len(pol.globals)} globals allowed)")
            for name in pol.unsafe_allowed():
                print(f"{args.file}: warning: {name} is allowed; it is not safe for an untrusted VM")
            return 0
        pol = policy.for_vm(args.vm, args.policy, args.vms_dir)
    except policy.PolicyError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(pol.summary(), indent=2))
    else:
        print(pol.to_toml(), end="")
    return 0
