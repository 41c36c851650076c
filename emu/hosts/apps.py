"""What a pod serves, read from its containers the way the image would run.

Known images (by the image name without registry and tag):
- `agnhost serve-hostname [--port 9376] [--http=true] [--udp] [--tcp]`:
  HTTP (or UDP) answering the pod's name.
- `agnhost netexec [--http-port 8080] [--udp-port 8081]`: HTTP with
  /hostname, /echo?msg=, /clientip (and the pod's name for any other path),
  UDP with the `hostname`/`echo`/`clientip` commands (emu.hosts.udp).
- `nginx` (any tag): HTTP on 80 answering the pod's name.
- `hashicorp/http-echo [-listen=:5678] [-text=...]`: HTTP answering the text.
- `coredns`: served by emu.cluster itself (the kube-dns pods).
Simplification: any other image serves HTTP on each TCP containerPort and
the netexec UDP commands on each UDP containerPort, answering the pod's name,
so ordinary manifests get answers without emu knowing the image. Containers
without ports and unknown commands (curl, busybox sleep) serve nothing.

A scenario's `apps:` entries (emu.scenario) add or override HTTP answers
per path for the pods they select.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from emu.hosts.http import HttpServer, Response
from emu.hosts.udp import UdpServer


@dataclass(frozen=True)
class Listen:
    protocol: str          # "http" | "udp"
    port: int
    text: str | None = None  # a fixed answer (http-echo -text); None: the pod's name
    netexec: bool = False    # agnhost netexec's paths and commands
    responses: dict = field(default_factory=dict, compare=False)  # extra per-path answers (scenario apps)


def _image_name(image: str) -> str:
    """`registry.k8s.io/e2e-test-images/agnhost:2.45` -> `agnhost`; `hashicorp/http-echo` kept whole."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # drop the registry host
    if parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def _flags(args) -> dict[str, str]:
    """Go flag-style arguments: `--name value`, `--name=value`, `-name=value`, bare booleans."""
    out, i, args = {}, 0, list(args)
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            key, eq, value = a.lstrip("-").partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                value, i = args[i + 1], i + 1
            out[key] = value if (eq or value) else "true"
        i += 1
    return out


def _truthy(v: str | None, default: bool) -> bool:
    return default if v is None else v.lower() in ("true", "1", "yes", "")


def listens(container) -> list[Listen]:
    """What one container serves."""
    image = _image_name(container.image)
    argv = list(container.command) + list(container.args)
    words = [a for a in argv if not a.startswith("-")]
    flags = _flags(argv)
    if image.endswith("agnhost"):
        if "serve-hostname" in words:
            port = int(flags.get("port", 9376))
            out = []
            if _truthy(flags.get("http"), True):
                out.append(Listen("http", port))
            if _truthy(flags.get("udp"), False):
                out.append(Listen("udp", port))
            return out
        if "netexec" in words:
            out = [Listen("http", int(flags.get("http-port", 8080)), netexec=True)]
            udp = int(flags.get("udp-port", 8081))
            if udp > 0:
                out.append(Listen("udp", udp, netexec=True))
            return out
    if image.endswith("http-echo"):
        port = int(flags.get("listen", ":5678").rsplit(":", 1)[-1])
        return [Listen("http", port, text=flags.get("text", "hello-world"))]
    if image == "nginx" or image.endswith("/nginx") or image.startswith("nginx"):
        return [Listen("http", 80)]
    if "coredns" in image:
        return []
    return [Listen("http" if p.protocol == "TCP" else "udp", p.container_port)
            for p in container.ports if p.protocol in ("TCP", "UDP")]


def _netexec_answers(hostname: str) -> dict:
    def echo(req):
        return parse_qs(urlsplit(req.target).query).get("msg", [""])[0]

    return {"/hostname": hostname, "/echo": echo,
            "/clientip": lambda req: f"{req.client[0]}:{req.client[1]}"}


def start(netns, pod_name: str, containers, extra: dict[int, dict] | None = None) -> list:
    """Start every server the containers run in `netns`; `extra` maps an HTTP
    port to per-path responses (a scenario's `apps`). Returns the servers."""
    servers = []
    seen = set()
    for c in containers:
        for ls in listens(c):
            if (ls.protocol, ls.port) in seen:
                continue  # two containers cannot bind one port; the first wins (the second would crash)
            seen.add((ls.protocol, ls.port))
            if ls.protocol == "udp":
                servers.append(UdpServer(netns, ls.port, hostname=pod_name).start())
                continue
            answers = _netexec_answers(pod_name) if ls.netexec else {}
            server = HttpServer(netns, ls.port, hostname=ls.text if ls.text is not None else pod_name)
            answers.update((extra or {}).get(ls.port, {}))
            server.responses.update({k: (v if callable(v) else Response.coerce(v)) for k, v in answers.items()})
            servers.append(server.start())
    return servers
