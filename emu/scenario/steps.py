"""What every scenario step shares: its Result, finding pods and addresses,
reading `expect` values, and the registry of step kinds (KINDS: kind ->
(parse, start)). Each kind's parse(step) checks all its options and
expectations before anything runs; start(run, step, params, done) runs it
on the virtual clock and calls done(Result).

The kinds: emu.scenario.clients (curl, dig, ping, connect),
emu.scenario.changes (scale, delete, apply, fail, sleep) and
emu.scenario.traffic (bulk flows).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from emu.model.fields import F
from emu.scenario.spec import Step
from emu.wire import ipv4

SECOND = 1_000_000_000


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


def address_of(run, step: Step, host: str, key: str) -> str:
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


def count_ok(f: F, n: int, check_only: bool = False, what: str | None = None) -> str | None:
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


def match(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)


def opt(step: Step, key: str) -> F:
    return step.field.get(key)


def expect_of(step: Step, scalar, keys: tuple[str, ...]) -> dict:
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


def kinds() -> dict:
    """kind -> (parse, start)."""
    from emu.scenario import changes, clients, traffic

    return {
        "curl": (clients.curl_parse, clients.curl_start), "dig": (clients.dig_parse, clients.dig_start),
        "ping": (clients.ping_parse, clients.ping_start),
        "connect": (clients.connect_parse, clients.connect_start),
        "scale": (changes.scale_parse, changes.scale_start),
        "delete": (changes.delete_parse, changes.delete_start),
        "apply": (changes.apply_parse, changes.apply_start), "fail": (changes.fail_parse, changes.fail_start),
        "sleep": (changes.sleep_parse, changes.sleep_start),
        "traffic": (traffic.traffic_parse, traffic.traffic_start),
    }
