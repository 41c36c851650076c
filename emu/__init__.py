"""emu: a packet-level emulator of Kubernetes networking."""

__version__ = "0.1.0"
