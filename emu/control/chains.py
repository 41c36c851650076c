"""kube-proxy iptables chain names (iptables mode).

Reproduces upstream's naming bit for bit
[kubernetes/kubernetes pkg/proxy/iptables/proxier.go: ``portProtoHash``,
``servicePortChainName``, ``servicePortEndpointChainName``]:

* servicePortName = ``"<ns>/<svc>:<portName>"``, or ``"<ns>/<svc>"`` when the
  port is unnamed (``proxy.ServicePortName.String()``);
* protocol lowercased (``tcp``/``udp``/``sctp``);
* SVC/SVL/EXT/FW: ``prefix + base32(sha256(servicePortName + protocol))[:16]``
  -- the four chains of one service port share one suffix;
* SEP: ``"KUBE-SEP-" + base32(sha256(servicePortName + protocol + endpoint))[:16]``
  with endpoint ``"IP:port"`` (IPv6 ``"[IP]:port"``, as net.JoinHostPort).

Values checked against upstream tests (pkg/proxy/iptables/cleanup_test.go and
proxier_test.go), see tests/test_chains.py. Every name is at most 28 chars
(``KUBE-`` + 3-char kind + ``-`` + 16 = 25), under iptables' limit.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

__all__ = [
    "KINDS",
    "MAX_CHAIN_NAME",
    "service_port_name",
    "hash_suffix",
    "service_chain",
    "endpoint_chain",
    "endpoint_string",
]

#: Per-service-port chain kinds that share the servicePortName hash.
KINDS = ("SVC", "SVL", "EXT", "FW")
#: iptables' chain-name limit as kube-proxy documents it.
MAX_CHAIN_NAME = 28


def service_port_name(ns: str, svc: str, port_name: str | None = None) -> str:
    """``"<ns>/<svc>:<port>"``; the ``:<port>`` part is absent for an unnamed port."""
    if not ns or not svc:
        raise ValueError("namespace and service name must be non-empty")
    base = f"{ns}/{svc}"
    return f"{base}:{port_name}" if port_name else base


def _proto(protocol: str) -> str:
    p = str(protocol).lower()
    if p not in ("tcp", "udp", "sctp"):
        raise ValueError(f"protocol must be TCP, UDP or SCTP, got {protocol!r}")
    return p


def hash_suffix(text: str) -> str:
    """First 16 chars of RFC 4648 base32 of SHA-256(text) (upstream ``portProtoHash``)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:16]


def service_chain(kind: str, ns: str, svc: str, port_name: str | None, protocol: str) -> str:
    """``KUBE-{SVC,SVL,EXT,FW}-<hash>`` for one service port."""
    k = str(kind).upper()
    if k not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = f"KUBE-{k}-" + hash_suffix(service_port_name(ns, svc, port_name) + _proto(protocol))
    assert len(name) <= MAX_CHAIN_NAME
    return name


def endpoint_string(ip: str, port: int) -> str:
    """``"IP:port"``, IPv6 bracketed, as Go's net.JoinHostPort."""
    addr = ipaddress.ip_address(ip)
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if addr.version == 6:
        return f"[{addr.compressed}]:{port}"
    return f"{addr}:{port}"


def endpoint_chain(ns: str, svc: str, port_name: str | None, protocol: str, ip: str, port: int) -> str:
    """``KUBE-SEP-<hash>`` for one endpoint of one service port."""
    text = service_port_name(ns, svc, port_name) + _proto(protocol) + endpoint_string(ip, port)
    name = "KUBE-SEP-" + hash_suffix(text)
    assert len(name) <= MAX_CHAIN_NAME
    return name
