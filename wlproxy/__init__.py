"""wlproxy: a filtering Wayland proxy for app VMs."""

__version__ = "0.1.0"
