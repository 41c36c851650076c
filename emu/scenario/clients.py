"""Client steps: what a user runs in a pod or on the external host, with
what `expect` can check.

| step | argument | options | expect |
|---|---|---|---|
| curl | URL | from, count, interval, maxTime, method, data, headers | status, error, backend, node, body, address, ok, failed |
| dig | name | from, type, tcp, server | status, addresses, answers, contains |
| ping | pod name, node name or IP | from, count, interval, size, ttl, timeout | received, status |
| connect | host:port | from, protocol (tcp/udp), timeout, message | open / refused / timeout / unreachable, reply, backend |

`expect` may be a scalar: a status code or an outcome word (ok, refused,
timeout, unreachable, reset, dns) for curl, an outcome word for connect, a
status for dig, a received count for ping. Globs (`web-*`) match pod names.
With `count` > 1 the per-request keys hold for every request; `ok`/`failed`
count requests (a number, or `">=3"`).
"""
from __future__ import annotations

from emu.errors import EmuError
from emu.scenario.steps import (SECOND, Result, address_of, backend_of, count_ok, expect_of, match, opt,
                                 source)
from emu.scenario.spec import Step, duration_ns
from emu.wire import ipv4

CURL_ERRORS = ("ok", "refused", "timeout", "unreachable", "reset", "dns", "empty reply", "partial", "protocol")


# ------------------------------------------------------------------ curl
def curl_parse(step: Step) -> dict:
    from urllib.parse import urlsplit

    url = opt(step, "curl").str()
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        opt(step, "curl").fail(f"{url!r} must be an http:// URL with a host")

    def scalar(f):
        if isinstance(f.value, int) and not isinstance(f.value, bool):
            return {"status": f}
        return {"error": f}

    expect = expect_of(step, scalar, ("status", "error", "backend", "node", "body", "address", "ok", "failed"))
    if "status" in expect:
        expect["status"] = expect["status"].int(lo=100, hi=599)
    if "error" in expect:
        expect["error"] = expect["error"].str(choices=CURL_ERRORS)
    for k in ("backend", "node", "body", "address"):
        if k in expect:
            expect[k] = expect[k].str()
    for k in ("ok", "failed"):
        if k in expect:
            count_ok(expect[k], 0, check_only=True)
    headers = opt(step, "headers")
    return {"url": url, "count": opt(step, "count").int(1, lo=1, hi=100_000),
            "interval": duration_ns(opt(step, "interval"), SECOND),
            "max_time": duration_ns(opt(step, "maxTime")),
            "headers": {k: headers.get(k).require().str() for k in headers.map().keys()} or None,
            "data": opt(step, "data").str(), "method": opt(step, "method").str(),
            "expect": expect}


def curl_start(run, step: Step, p: dict, done) -> None:
    from urllib.parse import urlsplit

    from emu.hosts.http import curl

    netns, key = source(run, step)
    url = p["url"]
    if key is None:  # the external host has no cluster DNS: node names via its /etc/hosts
        host = urlsplit(url).hostname
        if not ipv4.is_address(host):
            url = url.replace(host, address_of(run, step, host, "curl"), 1)
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
                if k in expect and not match(expect[k], values[k]):
                    failures.append(f"{which}{k} {values[k]!r}, expected {expect[k]!r}")
        elif {"backend", "node", "body", "address"} & set(expect) and not {"error", "ok", "failed"} & set(expect):
            failures.append(f"{which}{r.error}")
    ok = sum(r.error is None for r in results)
    for k, n in (("ok", ok), ("failed", len(results) - ok)):
        if k in expect and (problem := count_ok(expect[k], n)):
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
    expect = expect_of(step, lambda f: {"status": f}, ("status", "addresses", "answers", "contains"))
    if "status" in expect:
        expect["status"] = expect["status"].str()
    if "addresses" in expect:
        expect["addresses"] = sorted(a.ipv4() for a in expect["addresses"].items())
    if "answers" in expect:
        count_ok(expect["answers"], 0, check_only=True)
    if "contains" in expect:
        expect["contains"] = expect["contains"].str()
    return {"name": opt(step, "dig").str(), "type": opt(step, "type").str("A").upper(),
            "tcp": opt(step, "tcp").bool(False), "server": opt(step, "server").ipv4(), "expect": expect}


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
        if "answers" in expect and (problem := count_ok(expect["answers"], len(r.answers))):
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

    expect = expect_of(step, scalar, ("received", "status"))
    if "received" in expect:
        count_ok(expect["received"], 0, check_only=True)
    if "status" in expect:
        expect["status"] = expect["status"].str()
    return {"dst": opt(step, "ping").str(), "count": opt(step, "count").int(1, lo=1, hi=10_000),
            "interval": duration_ns(opt(step, "interval"), SECOND),
            "timeout": duration_ns(opt(step, "timeout"), 2 * SECOND),
            "size": opt(step, "size").int(56, lo=0, hi=65507), "ttl": opt(step, "ttl").int(64, lo=1, hi=255),
            "expect": expect}


def ping_start(run, step: Step, p: dict, done) -> None:
    from emu.hosts.ping import Ping

    netns, _ = source(run, step)
    dst = address_of(run, step, p["dst"], "ping")
    try:
        ping = Ping(run.engine, netns, dst, count=p["count"], interval_ns=p["interval"], size=p["size"],
                    ttl=p["ttl"], start_ns=run.engine.now).start()
    except EmuError as e:
        step.fail(str(e), "ping")
    expect = p["expect"]

    def finished(engine):
        got = sum(e.status == "reply" for e in ping.echoes)
        failures = []
        if "received" in expect and (problem := count_ok(expect["received"], got, what="received")):
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
    f = opt(step, "connect")
    host, sep, port = f.str().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        f.fail(f"{f.value!r} must be host:port")
    expect = expect_of(step, lambda e: {"status": e}, ("status", "reply", "backend"))
    if "status" in expect:
        expect["status"] = expect["status"].str(choices=CONNECT_STATUS)
    for k in ("reply", "backend"):
        if k in expect:
            expect[k] = expect[k].str()
    message = opt(step, "message").str("hostname")
    return {"host": host, "port": int(port), "protocol": opt(step, "protocol").str("tcp", choices=("tcp", "udp")),
            "timeout": duration_ns(opt(step, "timeout"), 2 * SECOND), "message": message.encode(),
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
        if "reply" in expect and not match(expect["reply"], text):
            failures.append(f"reply {text!r}, expected {expect['reply']!r}")
        if "backend" in expect and not match(expect["backend"], backend.partition(" (")[0]):
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
        go(address_of(run, step, p["host"], "connect"))
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
