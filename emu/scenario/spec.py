"""Scenario files: which cluster, what to capture, and timed steps.

    apiVersion: emu.dev/v1alpha1
    kind: Scenario
    metadata: {name: quickstart}
    seed: 1
    manifests: [manifests.yaml]        # files or folders, relative to this file
    cluster: {nodes: 2}                # ClusterSettings fields (override the manifests')
    capture: {interfaces: ["*"]}       # fnmatch patterns over `node-1/eth0`-style names; false: none
    apps:                              # extra HTTP answers for selected pods
    - {selector: {app: web}, port: 8080, responses: {/big: {status: 200, bodyBytes: 20000}}}
    steps:
    - curl: http://web/
      from: client                     # a pod (name or namespace/name) or `external`
      expect: {status: 200, backend: web-*}

Every step may have `name`, `at` (earliest start on the virtual clock),
`wait` (false: the next step starts at once) and `expect`. Steps run one
after another on the virtual clock; see emu.scenario.clients, .changes and
.traffic for each kind.

Errors name the file, line, step and field (ManifestError).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from emu.model.fields import Ctx, F
from emu.model.load import ManifestError, Map, parse_text, read_text

API_VERSION = "emu.dev/v1alpha1"
TOP = {"apiVersion", "kind", "metadata", "seed", "manifests", "cluster", "capture", "apps", "steps"}
COMMON = {"name", "at", "wait", "expect", "from"}
# step kind -> the keys it takes besides its own and COMMON
STEP_KEYS = {
    "curl": {"count", "interval", "maxTime", "headers", "data", "method"},
    "dig": {"type", "tcp", "server"},
    "ping": {"count", "interval", "size", "ttl", "timeout"},
    "connect": {"protocol", "timeout", "message"},
    "scale": {"replicas", "namespace"},
    "delete": {"namespace"},
    "apply": set(),
    "fail": {"notReadyAfter"},
    "sleep": set(),
    "traffic": {"protocol", "flows", "packets", "payload", "rate", "capture", "clients", "flowCache"},
}
NO_FROM = {"scale", "delete", "apply", "fail", "sleep"}
NO_EXPECT = {"scale", "delete", "apply", "fail", "sleep"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, None: 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def duration_ns(f: F, default: int | None = None) -> int | None:
    """`500ms`, `2s`, `1.5m`, or a number of seconds, as integer nanoseconds."""
    if not f.present:
        return default
    v = f.value
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        f.fail(f"must be a duration like 500ms, 2s or 1m, not {v!r}")
    m = _DURATION.match(str(v))
    if not m:
        f.fail(f"{v!r} is not a duration: use a number with ns, us, ms, s, m or h (seconds if none)")
    return round(float(m.group(1)) * _UNIT_NS[m.group(2)])


@dataclass
class Step:
    index: int            # 1-based, as users count
    kind: str
    arg: object           # the value of the kind's key (URL, name, ...)
    field: F              # the step's mapping (for errors found later)
    name: str
    at_ns: int | None
    wait: bool
    source: str | None    # `from`
    expect: F             # raw; each kind checks its own, and reads its options from `field`

    def fail(self, problem: str, key: str | None = None):
        (self.field.get(key) if key else self.field).fail(problem)


@dataclass
class AppSpec:
    selector: dict
    port: int
    responses: dict
    namespace: str = "default"


@dataclass
class Scenario:
    file: str
    name: str
    seed: int
    manifests: list[str]
    cluster: Map | None        # ClusterSettings fields, validated with the manifests
    cluster_line: int
    capture: list[str] | None  # interface patterns; None = no capture
    apps: list[AppSpec] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def is_scenario(path: str) -> bool:
    """A file whose first document is `kind: Scenario`."""
    if os.path.isdir(path) or path == "-" or not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r"^kind:\s*Scenario\s*$", head, re.M) is not None


def load(path: str) -> Scenario:
    docs = parse_text(read_text(path), path)
    if len(docs) != 1:
        raise ManifestError(f"a scenario file holds one document, found {len(docs)}", path)
    doc = docs[0]
    ctx = Ctx(path, None)
    d = F(doc.data, "", doc.line, ctx)
    d.map(TOP)
    if d.get("kind").require().str() != "Scenario":
        d.get("kind").fail("must be Scenario")
    d.get("apiVersion").require().str(choices=(API_VERSION,))
    meta = d.get("metadata").map({"name"})
    name = meta.get("name").str() or os.path.basename(os.path.dirname(os.path.abspath(path)))
    ctx.obj = f"Scenario {name}"
    here = os.path.dirname(path)
    man_f = d.get("manifests")
    manifests = [os.path.join(here, m.require().str()) for m in
                 (man_f.items() if isinstance(man_f.value, list) else [man_f] if man_f.present else [])]
    if not manifests:
        man_f.fail("list the manifests (files or folders, relative to the scenario)")
    for m, f in zip(manifests, man_f.items() if isinstance(man_f.value, list) else [man_f]):
        if not os.path.exists(m):
            f.fail(f"no such file or folder: {m}")
    cluster_f = d.get("cluster")
    cluster_f.map()
    return Scenario(path, name, d.get("seed").int(1, lo=0, hi=2**32 - 1), manifests,
                    cluster_f.value, cluster_f.line, _capture(d.get("capture")),
                    [_app(a) for a in d.get("apps").items()], _steps(d.get("steps")))


def _capture(f: F) -> list[str] | None:
    if not f.present:
        return ["*"]
    if f.value is False:
        return None
    f.map({"interfaces"})
    pats = [p.require().str() for p in f.get("interfaces").items()]
    return pats or ["*"]


def _app(f: F) -> AppSpec:
    f.map({"selector", "namespace", "port", "responses"})
    responses = {}
    rf = f.get("responses").map()
    for path in rf.keys():
        r = rf.get(path)
        if not str(path).startswith("/"):
            r.fail("a response key is a path starting with /")
        if isinstance(r.value, str):
            responses[path] = r.value
            continue
        r.map({"status", "body", "bodyBytes", "headers"})
        body = r.get("body").str()
        size = r.get("bodyBytes").int(lo=0, hi=10_000_000)
        if body is not None and size is not None:
            r.get("bodyBytes").fail("give body or bodyBytes, not both")
        if size is not None:  # a body of that many bytes, readable in Wireshark
            body = ("0123456789abcdef" * (size // 16 + 1))[:size]
        headers = [(k, r.get("headers").get(k).require().str()) for k in r.get("headers").map().keys()]
        responses[path] = {"status": r.get("status").int(200, lo=100, hi=599), "headers": headers,
                           "body": body or ""}
    return AppSpec(f.get("selector").require().str_map(), f.get("port").require().int(lo=1, hi=65535),
                   responses, f.get("namespace").str("default"))


def _steps(f: F) -> list[Step]:
    items = f.require().items()
    if not items:
        f.fail("a scenario needs at least one step")
    return [_step(i, s) for i, s in enumerate(items, 1)]


def _step(index: int, s: F) -> Step:
    s.map()
    kinds = [k for k in s.keys() if k in STEP_KEYS]
    if len(kinds) != 1:
        s.fail(f"step {index} must have exactly one of {', '.join(STEP_KEYS)}"
               + (f" (has {', '.join(kinds)})" if kinds else ""))
    kind = kinds[0]
    allowed = {kind} | COMMON | STEP_KEYS[kind]
    if kind in NO_FROM:
        allowed.discard("from")
    if kind in NO_EXPECT:
        allowed.discard("expect")
    # name the step in every error from here on
    s = F(s.value, f"steps[{index - 1}] ({kind})", s.line, s.ctx)
    s.map(allowed)
    arg = s.get(kind).require().value
    return Step(index, kind, arg, s, s.get("name").str() or "", duration_ns(s.get("at")),
                s.get("wait").bool(True), s.get("from").str(), s.get("expect"))
