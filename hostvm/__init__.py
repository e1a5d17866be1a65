"""hostvm: launch app VMs (cloud-hypervisor or qemu) each with its own wlproxy host half, supervised.

Modules: :mod:`hostvm.vmdef` (VM definition directories), :mod:`hostvm.rundir` (runtime
state under ``/run/vm/NAME``), :mod:`hostvm.chapi` (cloud-hypervisor REST client),
:mod:`hostvm.hypervisor` (backend interface), :mod:`hostvm.cloudhv` (cloud-hypervisor
backend), :mod:`hostvm.hosthalf` (starting the host half), :mod:`hostvm.launch` (start and
stop with undo), :mod:`hostvm.supervise` (watching a running VM), :mod:`hostvm.servicegen`
(s6 and systemd service files) and :mod:`hostvm.cli` (``wlproxy vm``). The qemu backend
(:mod:`hostvm.qemu`, :mod:`hostvm.qemuhv`) and the guest image tooling (:mod:`hostvm.image`)
plug into the same interfaces.
"""
