"""Scenario steps: each kind starts on the virtual clock, calls `done(result)`
when it is over, and checks its `expect`.

| step | argument | options | expect |
|---|---|---|---|
| curl | URL | from, count, interval, maxTime, method, data, headers | status, error, backend, node, body, address, ok, failed |
| dig | name | from, type, tcp, server | status, addresses, answers, contains |
| ping | pod name or IP | from, count, interval, size, ttl, timeout | received, status |
| connect | host:port | from, protocol (tcp/udp), timeout, message | open / refused / timeout / unreachable, reply, backend |
| scale | workload (`web`, `statefulset/db`) | replicas, namespace | - |
| delete | pod name (glob ok) | namespace | - |
| apply | manifest file(s) | - | - |
| fail | node | notReadyAfter (node-monitor-grace-period, 40s) | - |
| sleep | duration | - | - |

`expect` may be a scalar: a status code for curl, an outcome word for curl
and connect (ok, refused, timeout, unreachable, reset, dns), a status for
dig, a received count for ping. Globs (`web-*`) match pod names. With
`count` > 1 the per-request keys hold for every request; `ok`/`failed`
count requests (a number, or `">=3"`).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from emu.errors import EmuError
from emu.model.fields import F
from emu.scenario.spec import Step, duration_ns
from emu.wire import ipv4

SECOND = 1_000_000_000
CURL_ERRORS = ("ok", "refused", "timeout", "unreachable", "reset", "dns", "empty reply", "partial", "protocol")


@dataclass
class Result:
    """One step's outcome, as the report shows it."""
    outcome: str = ""
    latency_ns: int | None = None
    backend: str = ""
    failures: list[str] = field(default_factory=list)
    detail: object = None       # the app results (CurlResult, DigResult, Ping, ...)


# ------------------------------------------------------------------ helpers
def pod_key(run, step: Step, name: str, key: str, namespace: str = "default") -> tuple[str, str]:
    """A running pod by `name`, `namespace/name` or a glob (first match in name order)."""
    ns, _, pod = name.rpartition("/")
    ns = ns or namespace
    keys = sorted(k for k in run.cluster.fabric.pods if k[0] == ns and fnmatch.fnmatchcase(k[1], pod))
    if not keys:
        running = ", ".join(sorted(f"{k[0]}/{k[1]}" for k in run.cluster.fabric.pods)) or "none"
        step.fail(f"no running pod {ns}/{pod} (running: {running})", key)
    return keys[0]


def source(run, step: Step):
    """The namespace a client step runs in: `from` (a pod, or `external`)."""
    if step.source is None:
        step.fail("say where it runs from: a pod name or external", None)
    if step.source == "external":
        return run.cluster.external, None
    key = pod_key(run, step, step.source, "from")
    return run.cluster.pod(*key), key


def _address_of(run, step: Step, host: str, key: str) -> str:
    """An IP literal, a node name or a LoadBalancer Service's name (`web` or
    `web.namespace`: what the external host's /etc/hosts or public DNS
    would say), or a pod name."""
    if ipv4.is_address(host):
        return host
    outside = run.cluster.outside_name(host)
    if outside is not None:
        return outside
    return run.cluster.state.pods[pod_key(run, step, host, key)].ip


def backend_of(run, src: str, sport: int, dst: str, dport: int, proto: int = 6) -> str:
    """Who the connection reached after NAT: the pod behind the DNAT that a
    node's conntrack made for it (`pod (node)`), or the address itself."""
    want = (ipv4.aton(src), sport, ipv4.aton(dst), dport, proto)
    for node in run.cluster.fabric.nodes.values():
        for e in node.ns.conntrack.entries():
            if (e["orig_src"], e["orig_sport"], e["orig_dst"], e["orig_dport"], e["proto"]) == want \
                    and (e["reply_src"], e["reply_sport"]) != (want[2], want[3]):
                return run.pod_by_ip(ipv4.ntoa(e["reply_src"]))
    shown = run.pod_by_ip(dst)
    return shown if "(" in shown else ""   # straight to a pod; a VIP nobody DNATed: none


def _count_ok(f: F, n: int, check_only: bool = False, what: str | None = None) -> str | None:
    """`ok: 3` / `ok: ">=3"` / `"<=1"` against n; the problem or None."""
    v = f.value
    if isinstance(v, bool):
        f.fail(f"must be a count like 3 or \">=3\", not {v!r}")
    text = str(v).replace(" ", "")
    for op, test in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b), ("", lambda a, b: a == b)):
        if text.startswith(op) and text[len(op):].isdigit():
            if check_only:
                return None
            return None if test(n, int(text[len(op):])) else f"{what or f.path.rsplit('.', 1)[-1]}: {n}, expected {v}"
    f.fail(f"must be a count like 3 or \">=3\", not {v!r}")


def _match(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)


def _opt(step: Step, key: str) -> F:
    return step.field.get(key)


def _expect(step: Step, scalar, keys: tuple[str, ...]) -> dict:
    """The step's expect as {key: value}: a scalar through `scalar(f)`, a map with `keys`."""
    f = step.expect
    if not f.present:
        return {}
    if not isinstance(f.value, dict):
        return scalar(f)
    f.map(keys)
    return {k: f.get(k) for k in keys if f.get(k).present}


# Each kind: parse(step) -> params (all checks before anything runs), and
# start(run, step, params, done) on the virtual clock.

# ------------------------------------------------------------------ curl
def curl_parse(step: Step) -> dict:
    from urllib.parse import urlsplit

    url = _opt(step, "curl").str()
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        _opt(step, "curl").fail(f"{url!r} must be an http:// URL with a host")

    def scalar(f):
        if isinstance(f.value, int) and not isinstance(f.value, bool):
            return {"status": f}
        return {"error": f}

    expect = _expect(step, scalar, ("status", "error", "backend", "node", "body", "address", "ok", "failed"))
    if "status" in expect:
        expect["status"] = expect["status"].int(lo=100, hi=599)
    if "error" in expect:
        expect["error"] = expect["error"].str(choices=CURL_ERRORS)
    for k in ("backend", "node", "body", "address"):
        if k in expect:
            expect[k] = expect[k].str()
    for k in ("ok", "failed"):
        if k in expect:
            _count_ok(expect[k], 0, check_only=True)
    headers = _opt(step, "headers")
    return {"url": url, "count": _opt(step, "count").int(1, lo=1, hi=100_000),
            "interval": duration_ns(_opt(step, "interval"), SECOND),
            "max_time": duration_ns(_opt(step, "maxTime")),
            "headers": {k: headers.get(k).require().str() for k in headers.map().keys()} or None,
            "data": _opt(step, "data").str(), "method": _opt(step, "method").str(),
            "expect": expect}


def curl_start(run, step: Step, p: dict, done) -> None:
    from urllib.parse import urlsplit

    from emu.hosts.http import curl

    netns, key = source(run, step)
    url = p["url"]
    if key is None:  # the external host has no cluster DNS: node names via its /etc/hosts
        host = urlsplit(url).hostname
        if not ipv4.is_address(host):
            url = url.replace(host, _address_of(run, step, host, "curl"), 1)
    results = []

    def one(engine):
        results.append(curl(netns, url, finished, cluster=run.cluster if key else None,
                            headers=p["headers"], method=p["method"], data=p["data"],
                            timeout_ns=p["max_time"]))

    def finished(_r):
        if len(results) == p["count"] and all(r.done for r in results):
            done(_curl_result(run, results, p["expect"]))

    for i in range(p["count"]):
        run.engine.at(run.engine.now + i * p["interval"], one)


def _curl_result(run, results, expect) -> Result:
    failures, backends = [], []
    for i, r in enumerate(results, 1):
        backend = ""
        if r.connection is not None and r.address and r.local_port:
            backend = backend_of(run, ipv4.ntoa(r.connection.lip), r.local_port, r.address, r.port)
        backends.append(backend)
        got = "ok" if r.error is None else r.error.split(":", 1)[0]
        which = f"request {i}: " if len(results) > 1 else ""
        if "status" in expect and r.status != expect["status"]:
            failures.append(f"{which}status {r.status or r.error}, expected {expect['status']}")
        if "error" in expect and got != expect["error"]:
            failures.append(f"{which}{got}, expected {expect['error']}")
        if r.error is None:
            pod, _, node = backend.partition(" (")
            values = {"backend": pod, "node": node.rstrip(")"), "body": r.text, "address": r.address}
            for k in ("backend", "node", "body", "address"):
                if k in expect and not _match(expect[k], values[k]):
                    failures.append(f"{which}{k} {values[k]!r}, expected {expect[k]!r}")
        elif {"backend", "node", "body", "address"} & set(expect) and not {"error", "ok", "failed"} & set(expect):
            failures.append(f"{which}{r.error}")
    ok = sum(r.error is None for r in results)
    for k, n in (("ok", ok), ("failed", len(results) - ok)):
        if k in expect and (problem := _count_ok(expect[k], n)):
            failures.append(problem)
    last = results[-1]
    if len(results) == 1:
        outcome = f"{last.status} {last.reason}" if last.error is None else last.error
    else:
        errors = "/".join(sorted({r.error.split(":", 1)[0] for r in results if r.error}))
        outcome = f"{ok}/{len(results)} ok" + (f", {len(results) - ok} {errors}" if ok < len(results) else "")
    latency = None if last.finished_ns is None else last.finished_ns - last.started_ns
    return Result(outcome, latency, ", ".join(sorted({b for b in backends if b})), failures, results)


# ------------------------------------------------------------------ dig
def dig_parse(step: Step) -> dict:
    expect = _expect(step, lambda f: {"status": f}, ("status", "addresses", "answers", "contains"))
    if "status" in expect:
        expect["status"] = expect["status"].str()
    if "addresses" in expect:
        expect["addresses"] = sorted(a.ipv4() for a in expect["addresses"].items())
    if "answers" in expect:
        _count_ok(expect["answers"], 0, check_only=True)
    if "contains" in expect:
        expect["contains"] = expect["contains"].str()
    return {"name": _opt(step, "dig").str(), "type": _opt(step, "type").str("A").upper(),
            "tcp": _opt(step, "tcp").bool(False), "server": _opt(step, "server").ipv4(), "expect": expect}


def dig_start(run, step: Step, p: dict, done) -> None:
    from emu.hosts.dig import dig

    netns, _ = source(run, step)
    expect = p["expect"]

    def finished(r):
        failures = []
        status = r.status if r.error is None else r.error
        if "status" in expect and status != expect["status"]:
            failures.append(f"status {status}, expected {expect['status']}")
        if "addresses" in expect and sorted(r.addresses) != expect["addresses"]:
            failures.append(f"addresses {sorted(r.addresses)}, expected {expect['addresses']}")
        if "answers" in expect and (problem := _count_ok(expect["answers"], len(r.answers))):
            failures.append(problem)
        if "contains" in expect and expect["contains"] not in r.text():
            failures.append(f"the answer has no {expect['contains']!r}")
        shown = f"{status}, {len(r.answers)} answers" + (" over TCP" if r.protocol == "tcp" else "")
        done(Result(shown, r.elapsed_ns, ", ".join(str(a[-1]) for a in r.answers[:3])
                    + (", ..." if len(r.answers) > 3 else ""), failures, r))

    try:
        dig(netns, p["name"], p["type"], server=p["server"], tcp=p["tcp"], cluster=run.cluster,
            on_done=finished)
    except EmuError as e:
        step.fail(str(e), "dig")


# ------------------------------------------------------------------ ping
def ping_parse(step: Step) -> dict:
    def scalar(f):
        return {"received": f}

    expect = _expect(step, scalar, ("received", "status"))
    if "received" in expect:
        _count_ok(expect["received"], 0, check_only=True)
    if "status" in expect:
        expect["status"] = expect["status"].str()
    return {"dst": _opt(step, "ping").str(), "count": _opt(step, "count").int(1, lo=1, hi=10_000),
            "interval": duration_ns(_opt(step, "interval"), SECOND),
            "timeout": duration_ns(_opt(step, "timeout"), 2 * SECOND),
            "size": _opt(step, "size").int(56, lo=0, hi=65507), "ttl": _opt(step, "ttl").int(64, lo=1, hi=255),
            "expect": expect}


def ping_start(run, step: Step, p: dict, done) -> None:
    from emu.hosts.ping import Ping

    netns, _ = source(run, step)
    dst = _address_of(run, step, p["dst"], "ping")
    try:
        ping = Ping(run.engine, netns, dst, count=p["count"], interval_ns=p["interval"], size=p["size"],
                    ttl=p["ttl"], start_ns=run.engine.now).start()
    except EmuError as e:
        step.fail(str(e), "ping")
    expect = p["expect"]

    def finished(engine):
        got = sum(e.status == "reply" for e in ping.echoes)
        failures = []
        if "received" in expect and (problem := _count_ok(expect["received"], got, what="received")):
            failures.append(problem)
        bad = [e.status for e in ping.echoes if "status" in expect and e.status != expect["status"]]
        if bad:
            failures.append(f"{bad[0]}, expected {expect['status']}")
        others = sorted({e.status for e in ping.echoes if e.status != "reply"})
        outcome = f"{got}/{p['count']} replies" + (f", {', '.join(others)}" if others else "")
        rtts = [e.rtt_ns for e in ping.echoes if e.status == "reply" and e.rtt_ns]
        who = sorted({e.responder for e in ping.echoes if e.responder and e.status != "reply"})
        done(Result(outcome, rtts[0] if rtts else None, ", ".join(f"from {w}" for w in who), failures, ping))

    run.engine.at(run.engine.now + (p["count"] - 1) * p["interval"] + p["timeout"], finished)


# ------------------------------------------------------------------ connect
CONNECT_STATUS = ("open", "refused", "timeout", "unreachable")


def connect_parse(step: Step) -> dict:
    f = _opt(step, "connect")
    host, sep, port = f.str().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        f.fail(f"{f.value!r} must be host:port")
    expect = _expect(step, lambda e: {"status": e}, ("status", "reply", "backend"))
    if "status" in expect:
        expect["status"] = expect["status"].str(choices=CONNECT_STATUS)
    for k in ("reply", "backend"):
        if k in expect:
            expect[k] = expect[k].str()
    message = _opt(step, "message").str("hostname")
    return {"host": host, "port": int(port), "protocol": _opt(step, "protocol").str("tcp", choices=("tcp", "udp")),
            "timeout": duration_ns(_opt(step, "timeout"), 2 * SECOND), "message": message.encode(),
            "expect": expect}


def connect_start(run, step: Step, p: dict, done) -> None:
    netns, key = source(run, step)
    expect, port = p["expect"], p["port"]
    proto = 6 if p["protocol"] == "tcp" else 17

    def finished(status, reply, src, sport, dst, started):
        backend = backend_of(run, src, sport, dst, port, proto) if sport and status == "open" else ""
        failures = []
        if "status" in expect and status != expect["status"]:
            failures.append(f"{status}, expected {expect['status']}")
        text = (reply or b"").decode(errors="replace")
        if "reply" in expect and not _match(expect["reply"], text):
            failures.append(f"reply {text!r}, expected {expect['reply']!r}")
        if "backend" in expect and not _match(expect["backend"], backend.partition(" (")[0]):
            failures.append(f"backend {backend!r}, expected {expect['backend']!r}")
        done(Result(status + (f": {text}" if text else ""), run.engine.now - started, backend, failures))

    def go(address: str) -> None:
        started = run.engine.now
        src = ipv4.ntoa(netns.source_for(netns.routes[netns.route(ipv4.aton(address))]))
        if proto == 17:
            from emu.hosts.udp import UdpProbe
            UdpProbe(netns, address, port, message=p["message"], timeout_ns=p["timeout"]).start(
                lambda u: finished(u.status, u.reply, src, u.local_port, address, started))
            return
        from emu.hosts.tcp import Tcp, reason_of
        over = {}

        def connected(conn):
            if not over:
                over["done"] = True
                finished("open", None, src, conn.lport, address, started)
                conn.close()

        def error(errno):
            if not over:
                over["done"] = True
                reason = reason_of(errno)
                finished(reason if reason in ("refused", "unreachable") else "timeout", None, src, 0,
                         address, started)
                conn.close()  # a connect() still in SYN_SENT is just forgotten

        conn = Tcp.of(netns).connect(address, port, connected, error)
        run.engine.at(started + p["timeout"], lambda e: error("ETIMEDOUT"))

    if ipv4.is_address(p["host"]) or key is None:
        go(_address_of(run, step, p["host"], "connect"))
        return
    from emu.hosts.resolver import Resolver

    def resolved(r):
        v4 = [a for a in r.addresses if ipv4.is_address(a)]
        if v4:
            go(v4[0])
        else:
            done(Result(f"dns: {r.error or 'no IPv4 address'}", r.elapsed_ns, "",
                        [f"dns: {r.error}"] if expect else []))

    Resolver.for_pod(run.cluster, *key).resolve(p["host"], resolved)


# ------------------------------------------------------------------ changes
SCALABLE = {"": None, "deployment": "Deployment", "deploy": "Deployment", "replicaset": "ReplicaSet",
            "rs": "ReplicaSet", "statefulset": "StatefulSet", "sts": "StatefulSet"}


def scale_parse(step: Step) -> dict:
    f = _opt(step, "scale")
    kind, _, name = f.str().rpartition("/")
    if kind.lower() not in SCALABLE:
        f.fail(f"{kind!r} cannot be scaled: use deployment/, replicaset/ or statefulset/")
    return {"kind": SCALABLE[kind.lower()], "name": name,
            "replicas": _opt(step, "replicas").require().int(lo=0, hi=100_000),
            "namespace": _opt(step, "namespace").str("default")}


def scale_start(run, step: Step, p: dict, done) -> None:
    from emu.control import cluster as controllers

    try:
        controllers.scale(run.cluster.state, None, p["namespace"], p["name"], p["replicas"], p["kind"])
    except EmuError as e:
        step.fail(str(e), "scale")
    run.cluster.sync()
    done(Result(f"{p['name']}: {p['replicas']} replicas"))


def delete_parse(step: Step) -> dict:
    return {"name": _opt(step, "delete").str().removeprefix("pod/"),
            "namespace": _opt(step, "namespace").str("default")}


def delete_start(run, step: Step, p: dict, done) -> None:
    key = pod_key(run, step, p["name"], "delete", p["namespace"])
    run.cluster.delete_pod(*key)
    done(Result(f"deleted {key[0]}/{key[1]}"))


def apply_parse(step: Step) -> dict:
    f = _opt(step, "apply")
    items = f.items() if isinstance(f.value, list) else [f]
    here = os.path.dirname(step.field.ctx.file)
    paths = []
    for item in items:
        path = os.path.join(here, item.require().str())
        if not os.path.exists(path):
            item.fail(f"no such file or folder: {path}")
        paths.append(path)
    from emu.model import load
    return {"model": load(paths), "shown": ", ".join(i.value for i in items)}


def apply_start(run, step: Step, p: dict, done) -> None:
    try:
        run.cluster.apply(p["model"])
    except EmuError as e:
        step.fail(str(e), "apply")
    done(Result(f"applied {p['shown']}"))


def fail_parse(step: Step) -> dict:
    return {"node": _opt(step, "fail").str(),
            "grace": duration_ns(_opt(step, "notReadyAfter"), 40 * SECOND)}


def fail_start(run, step: Step, p: dict, done) -> None:
    if p["node"] not in run.cluster.fabric.nodes:
        step.fail(f"no node {p['node']!r} (nodes: {', '.join(run.cluster.fabric.nodes)})", "fail")
    run.cluster.fail_node(p["node"], not_ready_after_ns=p["grace"])
    done(Result(f"{p['node']} down; NotReady after {p['grace'] / SECOND:g} s"))


def sleep_parse(step: Step) -> dict:
    return {"ns": duration_ns(_opt(step, "sleep"))}


def sleep_start(run, step: Step, p: dict, done) -> None:
    run.engine.at(run.engine.now + p["ns"], lambda e: done(Result(f"{p['ns'] / SECOND:g} s")))


# ------------------------------------------------------------------ traffic (emu.bulk)
def traffic_parse(step: Step) -> dict:
    f = _opt(step, "traffic")
    target = f.str()
    if ":" not in target:
        f.fail(f"{target!r}: say where to: svc:port, namespace/svc:port, nodeport:NODE:PORT, "
               "lb:svc:port, pod:namespace/name:port or an address:port")
    clients = [c.require().str() for c in _opt(step, "clients").items()]
    if step.source:
        clients.insert(0, step.source)
    if not clients:
        step.fail("say where it runs from: `from` (a pod or external) or `clients` (a list)", None)
    cap = _opt(step, "capture")
    capture = cap.value if cap.present else "off"
    if not (capture in ("off", "full") or (isinstance(capture, int) and not isinstance(capture, bool)
                                             and capture >= 1)):
        cap.fail("must be off, full, or N (every Nth flow)")
    rate = _opt(step, "rate")
    if rate.present and (isinstance(rate.value, bool) or not isinstance(rate.value, (int, float)) or rate.value <= 0):
        rate.fail("must be a number of packets per second of virtual time")
    expect = _expect(step, lambda e: e.fail("must be a map: completed, broken, backends, drops"),
                     ("completed", "broken", "backends", "drops"))
    for k in ("completed", "broken", "backends"):
        if k in expect:
            _count_ok(expect[k], 0, check_only=True)
    if "drops" in expect:
        from kernels.drop import Drop
        for reason in expect["drops"].map().keys():
            if reason not in Drop.__members__:
                expect["drops"].get(reason).fail(f"no drop reason {reason!r} (see kernels/drop.py)")
            _count_ok(expect["drops"].get(reason), 0, check_only=True)
    return {"target": target, "clients": clients,
            "protocol": _opt(step, "protocol").str("tcp", choices=("tcp", "udp")),
            "flows": _opt(step, "flows").int(1, lo=1, hi=10_000_000),
            "packets": _opt(step, "packets").int(1, lo=1, hi=1_000_000),
            "payload": _opt(step, "payload").int(64, lo=8, hi=1400),
            "rate": float(rate.value) if rate.present else None, "capture": capture, "expect": expect}


def traffic_start(run, step: Step, p: dict, done) -> None:
    """Bulk flows through the same devices and tables (emu.bulk). It drives
    the engine itself, so steps started meanwhile (`wait: false` before it,
    a `fail` or `curl` at a time inside it) happen during the traffic."""
    from emu.bulk import Traffic

    try:
        t = Traffic(run.cluster, p["clients"], p["target"], protocol=p["protocol"], flows=p["flows"],
                    packets=p["packets"], payload=p["payload"], rate_pps=p["rate"], capture=p["capture"])
    except EmuError as e:
        step.fail(str(e), "traffic")
    report = t.run(progress=lambda sent, total: run.progress_packets(step, sent, total))
    expect, failures = p["expect"], []
    counts = {"completed": report.completed, "broken": report.broken, "backends": len(report.backends)}
    for k, n in counts.items():
        if k in expect and (problem := _count_ok(expect[k], n)):
            failures.append(problem)
    if "drops" in expect:
        by_reason: dict[str, int] = {}
        for _, reason, n in report.drops:
            by_reason[reason] = by_reason.get(reason, 0) + n
        for reason in expect["drops"].map().keys():
            got = by_reason.get(reason, 0)
            if problem := _count_ok(expect["drops"].get(reason), got, what=f"drops {reason}"):
                failures.append(problem)
    total = sum(report.backends.values()) or 1
    spread = ", ".join(f"{b.split(' ')[0]} {100 * n / total:.0f}%" for b, n in sorted(report.backends.items()))
    outcome = (f"{report.flows} flows: {report.completed} completed, {report.broken} broken; "
               f"{report.packets} packets, {report.pps / 1e6:.2f} M/s wall")
    done(Result(outcome, report.latency_ns[0] or None, spread, failures, report))


KINDS = {
    "curl": (curl_parse, curl_start), "dig": (dig_parse, dig_start), "ping": (ping_parse, ping_start),
    "connect": (connect_parse, connect_start), "scale": (scale_parse, scale_start),
    "delete": (delete_parse, delete_start), "apply": (apply_parse, apply_start),
    "fail": (fail_parse, fail_start), "sleep": (sleep_parse, sleep_start),
    "traffic": (traffic_parse, traffic_start),
}
