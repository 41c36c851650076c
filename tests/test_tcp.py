"""TCP endpoints (emu.hosts.tcp) on the hand-built two-node Flannel network:
handshake, bulk data both ways, teardown, errors and timers, each capture
read back with tshark (per interface, Wireshark's TCP analysis finds nothing
in a clean run) and a golden SYN compared byte for byte."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from emu.dataplane.netns import Netns
from emu.hosts.ping import Ping
from emu.hosts.tcp import Tcp
from tests.tshark import fields, problems

SEC = 1_000_000_000
PORT = 7777  # not a port Wireshark dissects as an application protocol


def _network(**kw):
    eng = Engine(seed=7)
    net = two_node_flannel(eng, **kw)
    eng.capture([p for p in eng.ports if not p.name.endswith("cni0-bridge")])
    return eng, net["pods"]["pod-a"], net["pods"]["pod-b"]


def _write(eng, tmp_path, name="run.pcapng"):
    path = tmp_path / name
    eng.taps.write_pcapng(path, eng)
    return path


def _warm(eng, a):
    """ARP everywhere first (a ping), so a later loss is the loss we make."""
    Ping(eng, a, "10.244.1.2").start()
    eng.run(until_ns=eng.now + SEC // 2)


def _transfer(eng, a, b, n=100_000):
    up = bytes(i % 251 for i in range(n))
    down = bytes((7 * i) % 253 for i in range(n))
    got = {"errors": []}

    def on_accept(conn):
        got["server"] = conn
        conn.send(down)
        conn.on_closed = conn.close  # EOF from the client: close our side too

    Tcp.of(b).listen(PORT, on_accept)

    def connected(conn):
        got["connected"] = eng.now
        conn.send(up)

    def data(_):
        if len(client.received) == n:
            client.close()

    client = Tcp.of(a).connect("10.244.1.2", PORT, connected, got["errors"].append)
    client.on_data = data
    got["client"] = client
    return up, down, got


def test_handshake_transfer_both_ways_and_clean_close(tmp_path):
    eng, a, b = _network()
    up, down, got = _transfer(eng, a, b)
    eng.run()
    client, server = got["client"], got["server"]
    assert got["errors"] == [] and "connected" in got
    assert bytes(server.received) == up and bytes(client.received) == down
    # the active closer went through TIME_WAIT for 60 s; the passive one through LAST_ACK
    assert [s for _, s in client.history] == ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1",
                                              "FIN_WAIT2", "TIME_WAIT", "CLOSE"]
    assert [s for _, s in server.history] == ["CLOSE", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
                                              "LAST_ACK", "CLOSE"]
    tw = dict((s, t) for t, s in client.history)
    assert client.history[-1][0] - tw["TIME_WAIT"] == 60 * SEC
    assert Tcp.of(a).connections() == [] and Tcp.of(b).connections() == []
    assert (6, client.lport) not in a.sockets and 32768 <= client.lport <= 60999

    path = _write(eng, tmp_path)
    assert problems(path) == []  # no retransmissions, dup ACKs, zero windows, bad checksums
    rows = fields(path, "tcp.stream", "ip.src", "tcp.flags", "tcp.seq", "tcp.ack", "tcp.len",
                  "tcp.window_size_value", "tcp.options.mss_val", "tcp.options.wscale.shift",
                  "tcp.options.sack_perm", "tcp.options.timestamp.tsval",
                  display_filter='frame.interface_name == "pod-a/eth0" && tcp')
    assert {r[0] for r in rows} == {"0"}
    syn, synack, ack = rows[0], rows[1], rows[2]
    assert (syn[1], syn[2], syn[3], syn[5]) == ("10.244.0.2", "0x0002", "0", "0")
    assert syn[6] == "64860" and syn[7] == "1410" and syn[8] == "7" and syn[9] and syn[10]
    assert (synack[1], synack[2], synack[3], synack[4]) == ("10.244.1.2", "0x0012", "0", "1")
    assert synack[6] == "64308" and synack[7] == "1410" and synack[8] == "7"
    assert (ack[2], ack[3], ack[4], ack[5], ack[6]) == ("0x0010", "1", "1", "0", "507")
    sent = [r for r in rows if r[1] == "10.244.0.2"]
    back = [r for r in rows if r[1] == "10.244.1.2"]
    assert sum(int(r[5]) for r in sent) == len(up) and sum(int(r[5]) for r in back) == len(down)
    assert max(int(r[5]) for r in rows) == 1398  # MSS 1410 less 12 bytes of timestamps
    # segments follow each other: each data segment starts where the previous ended
    nxt = 1
    for r in sent:
        if int(r[5]):
            assert int(r[3]) == nxt
            nxt += int(r[5])
    # teardown: client FIN, server ACK, server FIN, client ACK (relative numbers)
    fin_a = next(r for r in sent if int(r[2], 16) & 1)
    fin_b = next(r for r in back if int(r[2], 16) & 1)
    assert fin_a[2] == "0x0011" and int(fin_a[3]) == len(up) + 1
    assert fin_b[2] == "0x0011" and int(fin_b[3]) == len(down) + 1 and int(fin_b[4]) == len(up) + 2
    assert rows[-1][1] == "10.244.0.2" and rows[-1][2] == "0x0010" and int(rows[-1][4]) == len(down) + 2
    # PSH on the segment that empties the send queue only
    assert [r[3] for r in sent if int(r[2], 16) & 0x08] == [str(len(up) - len(up) % 1398 + 1)]
    # every TCP frame on the underlay is inside VXLAN between node addresses
    under = fields(path, "ip.src", "udp.dstport", display_filter='frame.interface_name == "node-1/eth0" && tcp')
    assert under and all(r[0].startswith("192.168.0.1") and r[1] == "8472" for r in under)
    assert eng.drop_summary() == []


def test_golden_syn(tmp_path):
    eng, a, b = _network()
    Tcp.of(b).listen(PORT, lambda c: None)
    conn = Tcp.of(a).connect("10.244.1.2", PORT)
    eng.run(until_ns=SEC // 10)
    path = _write(eng, tmp_path)
    frames = [f for f in rdpcap(str(path)) if f.haslayer(TCP)]
    syn = bytes(frames[0][IP])
    got = IP(syn)
    # the fields from the seeded rng are read back; everything else is fixed
    golden = (IP(src="10.244.0.2", dst="10.244.1.2", ttl=64, id=got.id, flags="DF")
              / TCP(sport=conn.lport, dport=PORT, seq=conn.iss, ack=0, flags="S", window=64860,
                    options=[("MSS", 1410), ("SAckOK", b""), ("Timestamp", (conn.ts_off, 0)),
                             ("NOP", None), ("WScale", 7)]))
    assert syn == bytes(golden)
    assert len(syn) == 60 and syn[32] >> 4 == 10  # 40-byte TCP header, as Linux's SYN
    assert syn[40:60] == bytes.fromhex("020405820402080a") + conn.ts_off.to_bytes(4, "big") \
        + bytes(4) + bytes.fromhex("01030307")
    assert conn.lport % 2 == 0  # connect() takes even ephemeral ports first


def test_mss_follows_the_mtu(tmp_path):
    for mtu, mss, window in ((1450, 1410, 64860), (1500, 1460, 64240), (1400, 1360, 65280)):
        eng, a, b = _network(pod_mtu=mtu, vxlan_mtu=max(mtu, 1450), underlay_mtu=max(mtu, 1450) + 50)
        Tcp.of(b).listen(PORT, lambda c: None)
        conn = Tcp.of(a).connect("10.244.1.2", PORT)
        eng.run(until_ns=SEC // 10)
        assert conn.state == "ESTABLISHED"
        assert conn.adv_mss == mss and conn.mss == mss - 12
        rows = fields(_write(eng, tmp_path, f"m{mtu}.pcapng"), "tcp.options.mss_val", "tcp.window_size_value",
                      display_filter='frame.interface_name == "pod-a/eth0" && tcp.flags.syn == 1 && tcp.flags.ack == 0')
        assert rows == [[str(mss), str(window)]], mtu


def test_closed_port_is_refused_by_the_rst(tmp_path):
    eng, a, b = _network()
    errors = []
    conn = Tcp.of(a).connect("10.244.1.2", 81, lambda c: errors.append("connected"), errors.append)
    eng.run()
    assert errors == ["refused"] and conn.error == "ECONNREFUSED" and conn.state == "CLOSE"
    assert (6, conn.lport) not in a.sockets
    path = _write(eng, tmp_path)
    # Wireshark's only remark is its "Connection reset" warning on the RST, at each hop
    assert all("[RST, ACK]" in line for line in problems(path))
    rows = fields(path, "ip.src", "tcp.flags", "tcp.ack", display_filter='frame.interface_name == "pod-a/eth0" && tcp')
    assert [(r[0], r[1]) for r in rows] == [("10.244.0.2", "0x0002"), ("10.244.1.2", "0x0014")]
    assert rows[1][2] == "1"  # the RST acks the SYN


def test_lost_syn_is_retransmitted_after_one_second(tmp_path):
    eng, a, b = _network()
    _warm(eng, a)
    pod_b_eth0 = b.iface("eth0").port
    t0 = eng.now
    eng.set_link_up(pod_b_eth0, False)
    eng.at(t0 + SEC // 2, lambda e: e.set_link_up(pod_b_eth0, True))
    accepted, done = [], []
    Tcp.of(b).listen(PORT, accepted.append)
    conn = Tcp.of(a).connect("10.244.1.2", PORT, lambda c: done.append(eng.now - t0), done.append)
    eng.run(until_ns=t0 + 3 * SEC)
    assert len(done) == 1 and SEC < done[0] < SEC + SEC // 100 and accepted
    assert conn.state == "ESTABLISHED" and conn.retransmits == 0
    assert conn.rto == 3 * SEC  # RFC 6298 5.7: 3 s once the SYN had to be resent
    path = _write(eng, tmp_path)
    rows = fields(path, "frame.time_relative", "tcp.flags", "tcp.analysis.retransmission",
                  display_filter='frame.interface_name == "pod-a/eth0" && tcp.flags.syn == 1 && tcp.flags.ack == 0')
    assert len(rows) == 2
    assert abs(float(rows[1][0]) - float(rows[0][0]) - 1.0) < 1e-6
    assert rows[0][2] == "" and rows[1][2] != ""  # Wireshark sees the second SYN as a retransmission
    flagged = problems(path)
    # every hop the first SYN crossed sees the second one as its retransmission; pod-b saw only one
    assert flagged and all("[TCP Retransmission]" in f and "[SYN]" in f for f in flagged)
    assert not any(f.startswith("pod-b/") for f in flagged)
    assert any(d[1] == "LINK_DOWN" for d in eng.drop_summary())


def test_connect_timeout_after_six_syn_retries(tmp_path):
    eng, a, b = _network()
    _warm(eng, a)
    eng.set_link_up(b.iface("eth0").port, False)  # pod-b is gone for good
    t0 = eng.now
    errors = []
    conn = Tcp.of(a).connect("10.244.1.2", PORT, None, lambda r: errors.append((r, eng.now - t0)))
    eng.run(until_ns=t0 + 200 * SEC)
    assert errors == [("timeout", 127 * SEC)] and conn.error == "ETIMEDOUT"
    rows = fields(_write(eng, tmp_path), "frame.time_relative",
                  display_filter='frame.interface_name == "pod-a/eth0" && tcp.flags.syn == 1')
    times = [round(float(r[0]) - float(rows[0][0])) for r in rows]
    assert times == [0, 1, 3, 7, 15, 31, 63]


def test_unreachable_host_and_no_route(tmp_path):
    # nobody has 10.244.1.99: node-2's ARP fails after 3 probes and it answers
    # the queued SYNs with ICMP host unreachable; tcp_v4_err fails the connect
    eng, a, b = _network()
    errors = []
    conn = Tcp.of(a).connect("10.244.1.99", PORT, None, lambda r: errors.append((r, eng.now)))
    eng.run(until_ns=10 * SEC)
    assert len(errors) == 1 and errors[0][0] == "unreachable" and conn.error == "EHOSTUNREACH"
    assert 3 * SEC <= errors[0][1] < 4 * SEC
    path = _write(eng, tmp_path)
    icmp = fields(path, "icmp.type", "icmp.code", display_filter='frame.interface_name == "pod-a/eth0" && icmp')
    assert icmp and icmp[0] == ["3", "1"]
    # a namespace without a route there: connect() fails at once (ENETUNREACH)
    eng2 = Engine(seed=1)
    lonely = eng2.add(Netns("lonely"))
    lonely.add_interface("eth0", 0x020000000001)
    lonely.add_address("eth0", "10.0.0.1/24")
    errs = []
    c = Tcp.of(lonely).connect("10.9.9.9", 80, None, errs.append)
    eng2.run()
    assert errs == ["unreachable"] and c.error == "ENETUNREACH" and eng2.now == 0


def test_abort_resets_the_peer(tmp_path):
    eng, a, b = _network()
    server_errors, accepted = [], []

    def on_accept(conn):
        accepted.append(conn)
        conn.on_error = server_errors.append

    Tcp.of(b).listen(PORT, on_accept)
    client = Tcp.of(a).connect("10.244.1.2", PORT, lambda c: c.send(b"hello"))
    eng.run(until_ns=SEC // 10)
    assert bytes(accepted[0].received) == b"hello"
    client.abort()
    eng.run(until_ns=SEC // 5)
    assert client.state == "CLOSE" and server_errors == ["reset"] and accepted[0].error == "ECONNRESET"
    path = _write(eng, tmp_path)
    assert all("[RST, ACK]" in line for line in problems(path))  # "Connection reset" warnings only
    last = fields(path, "tcp.flags", display_filter='frame.interface_name == "pod-b/eth0" && tcp')[-1]
    assert last == ["0x0014"]


def test_small_writes_are_delayed_by_nagle_and_acks_are_delayed():
    eng, a, b = _network()
    server = []
    Tcp.of(b).listen(PORT, server.append)
    client = Tcp.of(a).connect("10.244.1.2", PORT)
    eng.run(until_ns=SEC // 10)
    for _ in range(5):
        client.send(b"x" * 10)
    assert client.snd_nxt - client.snd_una == 10  # one small segment in flight, the rest waits
    eng.run(until_ns=SEC // 5)
    assert bytes(server[0].received) == b"x" * 50 and client.snd_una == client.snd_nxt == 51


def test_path_mtu_discovery_shrinks_the_mss():
    # pods at 1500 over a 1450 overlay: node-1 answers the first full-size
    # segments with ICMP fragmentation needed (DF); tcp_v4_mtu_reduced lowers
    # the MSS to 1450 - 40 - 12 and resends at once, and the transfer completes
    eng, a, b = _network(pod_mtu=1500)
    up, down, got = _transfer(eng, a, b, 20_000)
    eng.run()
    client, server = got["client"], got["server"]
    assert got["errors"] == [] and bytes(server.received) == up and bytes(client.received) == down
    assert client.adv_mss == 1460 and client.mtu == 1450 and client.mss == 1398 and server.mss == 1398
