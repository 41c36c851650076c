"""Bulk traffic through an emulated cluster (issue 6): see emu.bulk.traffic."""
from emu.bulk.traffic import Report, Traffic, flush_stale_udp, set_conntrack_max, udp_endpoints

__all__ = ["Traffic", "Report", "set_conntrack_max", "flush_stale_udp", "udp_endpoints"]
