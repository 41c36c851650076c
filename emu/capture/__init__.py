"""Capture: what the data plane's taps write.

- `PcapngWriter` (emu.capture.pcapng): one pcapng per run, an interface per
  tapped port, each frame with its decision comment and packet id.
- `PcapWriter` (emu.capture.pcap): classic nanosecond pcap, one interface per
  file, for tools that need it.
"""
from emu.capture.pcap import PcapWriter
from emu.capture.pcapng import PcapngWriter

__all__ = ["PcapWriter", "PcapngWriter"]
