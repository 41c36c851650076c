"""The traffic step: bulk flows (emu.bulk.Traffic) through the same
devices and tables as every other step."""
from __future__ import annotations

from emu.errors import EmuError
from emu.scenario.spec import Step
from emu.scenario.steps import Result, count_ok, expect_of, opt


def traffic_parse(step: Step) -> dict:
    f = opt(step, "traffic")
    target = f.str()
    if ":" not in target:
        f.fail(f"{target!r}: say where to: svc:port, namespace/svc:port, nodeport:NODE:PORT, "
               "lb:svc:port, pod:namespace/name:port or an address:port")
    clients = [c.require().str() for c in opt(step, "clients").items()]
    if step.source:
        clients.insert(0, step.source)
    if not clients:
        step.fail("say where it runs from: `from` (a pod or external) or `clients` (a list)", None)
    cap = opt(step, "capture")
    capture = cap.value if cap.present else "off"
    if not (capture in ("off", "full") or (isinstance(capture, int) and not isinstance(capture, bool)
                                             and capture >= 1)):
        cap.fail("must be off, full, or N (every Nth flow)")
    rate = opt(step, "rate")
    if rate.present and (isinstance(rate.value, bool) or not isinstance(rate.value, (int, float)) or rate.value <= 0):
        rate.fail("must be a number of packets per second of virtual time")
    expect = expect_of(step, lambda e: e.fail("must be a map: completed, broken, backends, drops"),
                     ("completed", "broken", "backends", "drops"))
    for k in ("completed", "broken", "backends"):
        if k in expect:
            count_ok(expect[k], 0, check_only=True)
    if "drops" in expect:
        from kernels.drop import Drop
        for reason in expect["drops"].map().keys():
            if reason not in Drop.__members__:
                expect["drops"].get(reason).fail(f"no drop reason {reason!r} (see kernels/drop.py)")
            count_ok(expect["drops"].get(reason), 0, check_only=True)
    return {"target": target, "clients": clients,
            "protocol": opt(step, "protocol").str("tcp", choices=("tcp", "udp")),
            "flows": opt(step, "flows").int(1, lo=1, hi=10_000_000),
            "packets": opt(step, "packets").int(1, lo=1, hi=1_000_000),
            "payload": opt(step, "payload").int(64, lo=8, hi=1400),
            "rate": float(rate.value) if rate.present else None, "capture": capture,
            "flow_cache": opt(step, "flowCache").bool(True), "expect": expect}


def traffic_start(run, step: Step, p: dict, done) -> None:
    """Bulk flows through the same devices and tables (emu.bulk). It drives
    the engine itself, so steps started meanwhile (`wait: false` before it,
    a `fail` or `curl` at a time inside it) happen during the traffic."""
    from emu.bulk import Traffic

    try:
        t = Traffic(run.cluster, p["clients"], p["target"], protocol=p["protocol"], flows=p["flows"],
                    packets=p["packets"], payload=p["payload"], rate_pps=p["rate"], capture=p["capture"],
                    flow_cache=p["flow_cache"])
    except EmuError as e:
        step.fail(str(e), "traffic")
    report = t.run(progress=lambda sent, total: run.progress_packets(step, sent, total))
    expect, failures = p["expect"], []
    counts = {"completed": report.completed, "broken": report.broken, "backends": len(report.backends)}
    for k, n in counts.items():
        if k in expect and (problem := count_ok(expect[k], n)):
            failures.append(problem)
    if "drops" in expect:
        by_reason: dict[str, int] = {}
        for _, reason, n in report.drops:
            by_reason[reason] = by_reason.get(reason, 0) + n
        for reason in expect["drops"].map().keys():
            got = by_reason.get(reason, 0)
            if problem := count_ok(expect["drops"].get(reason), got, what=f"drops {reason}"):
                failures.append(problem)
    total = sum(report.backends.values()) or 1
    spread = ", ".join(f"{b.split(' ')[0]} {100 * n / total:.0f}%" for b, n in sorted(report.backends.items()))
    lost = report.packets - report.delivered
    outcome = (f"{report.flows} flows: {report.completed} completed, {report.broken} broken; "
               f"{report.packets} packets" + (f" ({lost} lost)" if lost else "")
               + f", {report.pps / 1e6:.2f} M/s wall")
    done(Result(outcome, report.latency_ns[0] or None, spread, failures, report))
