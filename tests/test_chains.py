"""kube-proxy iptables chain names against upstream's own test values.

Expected names are copied from kubernetes/kubernetes
pkg/proxy/iptables/cleanup_test.go (TestCleanupLeftovers fixture, which is
the ruleset proxier_test.go's TestOverallIPTablesRules produces) and the
reference's section 1.1.
"""

import pytest

from emu.control.chains import (
    KINDS,
    MAX_CHAIN_NAME,
    endpoint_chain,
    endpoint_string,
    hash_suffix,
    service_chain,
    service_port_name,
)

# (ns, svc, port name, protocol) -> shared 16-char suffix
UPSTREAM_SERVICES = [
    ("ns1", "svc1", "p80", "tcp", "XPGD46QRK7WJZT7O"),
    ("ns2", "svc2", "p80", "tcp", "GNZBNJ2PO5MGZ6GT"),
    ("ns3", "svc3", "p80", "tcp", "X27LE4BHSL4DOUIK"),
    ("ns4", "svc4", "p80", "tcp", "4SW47YFZTEDKD3PK"),
    ("ns5", "svc5", "p80", "tcp", "NUKIZ6OKUXPJNT4C"),
]

# (ns, svc, port name, protocol, endpoint ip, port) -> KUBE-SEP name
UPSTREAM_ENDPOINTS = [
    ("ns1", "svc1", "p80", "tcp", "10.180.0.1", 80, "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    ("ns2", "svc2", "p80", "tcp", "10.180.0.2", 80, "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
    ("ns3", "svc3", "p80", "tcp", "10.180.0.3", 80, "KUBE-SEP-OYPFS5VJICHGATKP"),
    ("ns4", "svc4", "p80", "tcp", "10.180.0.4", 80, "KUBE-SEP-UKSFD7AGPMPPLUHC"),
    ("ns4", "svc4", "p80", "tcp", "10.180.0.5", 80, "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
    # same endpoint IP:port as ns3's, different service -> different chain
    ("ns5", "svc5", "p80", "tcp", "10.180.0.3", 80, "KUBE-SEP-I77PXRDZVX7PMWMN"),
]


@pytest.mark.parametrize("ns,svc,port,proto,suffix", UPSTREAM_SERVICES)
def test_service_chains_match_upstream(ns, svc, port, proto, suffix):
    for kind in KINDS:
        name = service_chain(kind, ns, svc, port, proto)
        assert name == f"KUBE-{kind}-{suffix}"
        assert len(name) <= MAX_CHAIN_NAME


@pytest.mark.parametrize("ns,svc,port,proto,ip,tport,expected", UPSTREAM_ENDPOINTS)
def test_endpoint_chains_match_upstream(ns, svc, port, proto, ip, tport, expected):
    name = endpoint_chain(ns, svc, port, proto, ip, tport)
    assert name == expected
    assert len(name) <= MAX_CHAIN_NAME


def test_protocol_is_case_insensitive_and_matters():
    assert service_chain("svc", "ns1", "svc1", "p80", "TCP") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert service_chain("SVC", "ns1", "svc1", "p80", "UDP") != "KUBE-SVC-XPGD46QRK7WJZT7O"


def test_unnamed_port_drops_colon():
    assert service_port_name("ns", "svc", "") == "ns/svc"
    assert service_port_name("ns", "svc", None) == "ns/svc"
    assert service_port_name("ns", "svc", "http") == "ns/svc:http"
    assert service_chain("SVC", "ns", "svc", "", "tcp") == "KUBE-SVC-" + hash_suffix("ns/svctcp")


def test_endpoint_string_ipv6_bracketed():
    assert endpoint_string("10.1.2.3", 80) == "10.1.2.3:80"
    assert endpoint_string("2001:db8::2", 80) == "[2001:db8::2]:80"
    assert endpoint_chain("ns", "s", "p", "tcp", "2001:db8::2", 80) == (
        "KUBE-SEP-" + hash_suffix("ns/s:ptcp[2001:db8::2]:80")
    )


def test_suffix_alphabet():
    for args in UPSTREAM_SERVICES:
        s = hash_suffix(service_port_name(*args[:3]) + args[3])
        assert len(s) == 16 and set(s) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


@pytest.mark.parametrize(
    "call",
    [
        lambda: service_chain("SEP", "ns", "s", "p", "tcp"),
        lambda: service_chain("SVC", "ns", "s", "p", "icmp"),
        lambda: service_chain("SVC", "", "s", "p", "tcp"),
        lambda: endpoint_chain("ns", "s", "p", "tcp", "not-an-ip", 80),
        lambda: endpoint_chain("ns", "s", "p", "tcp", "10.0.0.1", 0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
