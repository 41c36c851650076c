"""`emu inspect`: reading captures back with tshark (summary, follow one
packet, frame listings) and its errors, as a user sees them."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys

import pytest
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, raw

from emu import inspect
from emu.capture.pcapng import PcapngWriter
from emu.errors import EmuError
from tests.tshark import fields, one_interface
from tests.util import ROOT

QUICKSTART = ROOT / "pcaps" / "quickstart.pcapng"  # the golden capture of examples/quickstart
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


def _emu(*args, env=None):
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """A private copy of the golden capture: `make pcaps` may rewrite pcaps/ while tests run."""
    return shutil.copy(QUICKSTART, tmp_path_factory.mktemp("inspect") / "quickstart.pcapng")


@pytest.fixture(scope="module")
def demo_summary(capture):
    return {i.name: i for i in inspect.summary(capture)}


def _syn_ids(capture, interface: str) -> list[int]:
    """Packet ids of the client's SYNs, read from the capture's comments."""
    rows = fields(capture, "frame.comment", display_filter=(
        f'frame.interface_name == "{interface}" && tcp.flags.syn == 1 && tcp.flags.ack == 0'))
    return [int(row[0].split(":")[0].removeprefix("pkt ")) for row in rows]


# --- summary ------------------------------------------------------------


def test_summary_counts_what_each_interface_saw(capture, demo_summary):
    per_frame = [row[0] for row in fields(capture, "frame.interface_name")]
    assert set(demo_summary) == set(per_frame)
    assert {name: i.frames for name, i in demo_summary.items()} == {n: per_frame.count(n) for n in set(per_frame)}
    assert list(demo_summary) == sorted(demo_summary)
    for name in ("node-1/eth0", "node-2/eth0"):  # the underlay carries the overlay in VXLAN
        assert {"vxlan", "tcp", "http", "dns"} <= set(demo_summary[name].protocols)
    client = demo_summary["client/eth0"]
    assert {"dns", "tcp", "http", "arp"} <= set(client.protocols) and "vxlan" not in client.protocols
    assert "vxlan" not in demo_summary["node-1/flannel.1"].protocols  # inside the tunnel: plain packets
    assert 0.0 <= client.first < client.last and client.bytes >= 42 * client.frames  # 42: an ARP frame


def test_the_quickstart_has_no_problems_when_each_interface_is_analysed_alone(demo_summary):
    assert {name: i.problem_frames for name, i in demo_summary.items() if i.problem_frames} == {}


def _syn(sport: int = 1234, **tcp) -> bytes:
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
               / TCP(sport=sport, dport=80, flags="S", seq=1, **tcp))


def test_problems_are_counted_per_interface(tmp_path):
    path = tmp_path / "problems.pcapng"
    syn, bad_checksum = _syn(), _syn(4321, chksum=0x1234)
    malformed = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=53)
                    / DNS(qd=DNSQR(qname="web.default.svc.cluster.local")))[:-9]
    with PcapngWriter(path) as w:
        a, b, c = (w.add_interface(n) for n in ("a/eth0", "b/eth0", "c/eth0"))
        w.write(a, 1000, syn, "tcp SYN", packet_id=0)
        w.write(b, 2000, syn, "bridge forward", packet_id=0)  # the same SYN one hop on
        w.write(c, 3000, bad_checksum, "broken on purpose", packet_id=1)
        w.write(c, 4000, malformed, "cut short on purpose", packet_id=2)
    # read as one capture point, the second copy of the SYN is a "retransmission"
    assert fields(path, "frame.number", display_filter="tcp.analysis.flags") == [["2"]]

    got = {i.name: i for i in inspect.summary(path)}
    assert got["a/eth0"].problem_frames == got["b/eth0"].problem_frames == 0
    c = got["c/eth0"]
    assert (c.problem_frames, c.bad_checksums, c.malformed) == (2, 1, 1)
    assert c.expert_warnings == 2 and c.tcp_analysis == 0


# --- follow -------------------------------------------------------------


def test_follow_a_syn_from_the_client_to_a_web_pod_on_the_other_node(capture):
    crossing = [pid for pid in _syn_ids(capture, "client/eth0")
                if fields(capture, "frame.number", display_filter=(
                    f'frame.packet_id == {pid} && frame.interface_name == "node-2/eth0"'))]
    assert crossing, "the quickstart has no curl served by a web pod on node-2"
    hops = inspect.follow(capture, crossing[0])
    where = [h.interface for h in hops]

    assert {h.packet for h in hops} == {crossing[0]}
    assert [h.number for h in hops] == sorted(h.number for h in hops)
    assert [h.time for h in hops] == sorted(h.time for h in hops)
    assert where[0] == "client/eth0"
    assert where[-1].startswith("web-") and where[-1].endswith("/eth0") and "delivered" in hops[-1].comment
    node1, node2 = where.index("node-1/eth0"), where.index("node-2/eth0")
    assert all(w.startswith("node-1/") for w in where[1:node1])
    assert all(w.startswith(("underlay/", "node-2/")) for w in where[node1 + 1:-1]) and node1 < node2
    assert "VXLAN encap" in hops[node1].comment and "VXLAN decap" in hops[node2].comment
    assert hops[node1].protocol == "TCP in VXLAN" and "[SYN]" in hops[node1].info  # the inner packet
    assert any("DNAT" in h.comment and "KUBE-SEP-" in h.comment for h in hops[:node1])
    # the client asked a Service; after DNAT the SYN is addressed to the pod
    assert ipaddress.ip_address(hops[0].destination) in SERVICE_CIDR
    assert hops[-1].destination.startswith("10.244.1.")


def test_follow_an_unknown_packet_names_the_file(capture):
    with pytest.raises(EmuError, match=r"quickstart\.pcapng: no frame of packet 987654"):
        inspect.follow(capture, 987654)


# --- frames -------------------------------------------------------------


def test_frames_on_one_interface_matching_a_filter(capture, tmp_path):
    responses = inspect.frames(capture, "http.response", interface="client/eth0")
    client_alone = one_interface(capture, "client/eth0", tmp_path / "client.pcapng")
    assert len(responses) == len(fields(client_alone, "frame.number", display_filter="http.response")) > 0
    assert all("200 OK" in f.info for f in responses)
    assert {f.interface for f in responses} == {"client/eth0"} and all(f.packet is not None for f in responses)
    assert len(inspect.frames(capture, "tcp", limit=3)) == 3
    with pytest.raises(EmuError, match="no interface 'node-9/eth0'; interfaces: client/eth0"):
        inspect.frames(capture, interface="node-9/eth0")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.pcapng", "no such file"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "notes.txt").write_text("hello\n") and p / "notes.txt", "not a pcapng or pcap capture"),
    (lambda p: (p / "cut.pcapng").write_bytes(QUICKSTART.read_bytes()[:5000]) and p / "cut.pcapng", "cut short"),
])
def test_bad_files_are_one_readable_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(EmuError, match=message) as e:
        inspect.summary(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- the command --------------------------------------------------------


def test_cli_summary_through_a_pipe_is_plain_text(capture):
    r = _emu("inspect", str(capture))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"# {capture}: frames per interface"
    assert lines[1].split()[:3] == ["INTERFACE", "FRAMES", "BYTES"]
    assert any(line.startswith("node-1/eth0 ") and "vxlan" in line for line in lines)
    assert "\x1b[" not in r.stdout and not set("│┃━─┏") & set(r.stdout)
    assert f"tshark -r {capture} -d udp.port==8472,vxlan" in r.stdout


def test_cli_follows_a_packet_and_lists_frames(capture):
    pid = _syn_ids(capture, "client/eth0")[0]
    r = _emu("inspect", str(capture), "--packet", str(pid))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"# packet {pid} in {capture}") and "DNAT" in r.stdout
    r = _emu("inspect", str(capture), "-Y", "dns", "-i", "client/eth0", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 + 2 + 1 and "--limit 0 lists all" in r.stdout


def test_cli_on_a_terminal_keeps_brackets(capture):
    """Decisions and tshark's Info hold brackets ("[ct NEW]") that rich must not read as markup."""
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "300"}  # rich: a terminal, wide enough for one line
    r = _emu("inspect", str(capture), "-Y", 'frame.comment contains "[ct NEW]"', "-n", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert "┃" in r.stdout and "[ct NEW]" in r.stdout


@pytest.mark.parametrize("args, says", [
    (["/no/such.pcapng"], "/no/such.pcapng: no such file"),
    (["README.md"], "README.md: not a pcapng or pcap capture"),
    (["{capture}", "--packet", "987654"], "no frame of packet 987654"),
    (["{capture}", "-Y", "tcp.port =="], "display filter 'tcp.port =='"),
    (["{capture}", "-p", "1", "-i", "client/eth0"], "does not combine"),
])
def test_cli_errors_are_one_red_line_and_exit_2(capture, args, says):
    r = _emu("inspect", *(a.format(capture=capture) for a in args))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and says in r.stderr, r.stderr


def test_cli_shows_a_traceback_only_with_verbose():
    r = _emu("-v", "inspect", "/no/such.pcapng")
    assert r.returncode != 0 and "Traceback" in r.stderr and "EmuError" in r.stderr


def test_cli_says_how_to_install_tshark(capture, tmp_path):
    r = _emu("inspect", str(capture), env={**os.environ, "PATH": str(tmp_path)})  # no tshark on PATH
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "tshark is not installed" in r.stderr and "Debian package tshark" in r.stderr
    assert "make setup" in r.stderr
