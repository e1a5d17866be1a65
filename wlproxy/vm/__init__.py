"""wlproxy.vm: launch app VMs (cloud-hypervisor or qemu) each with its own wlproxy host half, supervised.

Modules: :mod:`wlproxy.vm.vmdef` (VM definition directories), :mod:`wlproxy.vm.rundir` (runtime
state under ``/run/vm/NAME``), :mod:`wlproxy.vm.chapi` (cloud-hypervisor REST client),
:mod:`wlproxy.vm.hypervisor` (backend interface), :mod:`wlproxy.vm.cloudhv` (cloud-hypervisor
backend), :mod:`wlproxy.vm.hosthalf` (starting the host half), :mod:`wlproxy.vm.launch` (start and
stop with undo), :mod:`wlproxy.vm.supervise` (watching a running VM), :mod:`wlproxy.vm.servicegen`
(s6 and systemd service files) and :mod:`wlproxy.vm.cli` (``wlproxy vm``). The qemu backend
(:mod:`wlproxy.vm.qemu`, :mod:`wlproxy.vm.qemuhv`) and the guest image tooling (:mod:`wlproxy.vm.image`)
plug into the same interfaces.
"""
