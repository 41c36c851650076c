"""The capture checker itself can fail: it flags what Wireshark flags."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from emu.capture.pcapng import PcapngWriter
from tests.tshark import problems


def _write(path, frames_by_if):
    with PcapngWriter(path) as w:
        ids = {name: w.add_interface(name) for name in frames_by_if}
        t = 0
        for name, frames in frames_by_if.items():
            for f in frames:
                t += 1000
                w.write(ids[name], t, f)


def test_flags_bad_checksums_and_same_interface_retransmissions(tmp_path):
    good = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    bad = bytearray(good)
    bad[24] ^= 0xFF  # IP header checksum
    query = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=53)
                  / DNS(id=7, qd=DNSQR(qname="a.example")))
    path = tmp_path / "x.pcapng"
    _write(path, {"a/eth0": [good, bytes(bad)], "b/eth0": [query, query], "c/eth0": [query]})
    found = problems(path)
    assert any(line.startswith("a/eth0:") for line in found)      # bad checksum
    assert any(line.startswith("b/eth0:") for line in found)      # a real retransmission
    assert not any(line.startswith("c/eth0:") for line in found)  # the same query elsewhere is fine
