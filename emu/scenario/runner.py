"""Run a scenario: build the cluster, play the steps on the virtual clock,
check every `expect`, write the capture.

    report = run(load("examples/quickstart/scenario.yaml"), output="quickstart.pcapng")
    report.ok, report.steps[0].result.outcome, report.failures()

Steps start one after another: each when the one before it is over (or at
once after a step with `wait: false`), and never before its `at`. After the
last step the clock runs on until nothing is left to happen (TCP's
TIME_WAIT, ARP timers), so the capture holds every packet. A step's packets
are those the engine created while it ran (concurrent steps share them).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emu.cluster import AppOverride, Cluster, default_taps
from emu.errors import EmuError
from emu.model.load import Map, RawDoc, read_docs
from emu.model.manifests import build
from emu.scenario import steps as kinds
from emu.scenario.spec import Scenario, Step
from kernels.drop import describe


@dataclass
class StepReport:
    step: Step
    started_ns: int
    finished_ns: int | None = None
    result: kinds.Result | None = None
    packets: int = 0
    drops: list[tuple[str, int]] = field(default_factory=list)   # (reason, count) while it ran

    @property
    def label(self) -> str:
        s = self.step
        if s.name:
            return s.name
        arg = " ".join(map(str, s.arg)) if isinstance(s.arg, list) else str(s.arg)
        return f"{s.kind} {arg}" + (f" from {s.source}" if s.source else "")

    @property
    def failures(self) -> list[str]:
        if self.result is None:
            return ["did not finish"]
        return self.result.failures


@dataclass
class Report:
    scenario: Scenario
    cluster: Cluster
    steps: list[StepReport]
    frames: int = 0
    output: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        return [f"step {r.step.index} ({r.label}): {f}" for r in self.steps for f in r.failures]

    @property
    def drops(self) -> list[tuple[str, str, int]]:
        return self.cluster.engine.drop_summary()


def build_model(scenario: Scenario):
    """The manifests, with the scenario's `cluster:` fields over any ClusterSettings they hold."""
    docs = read_docs(scenario.manifests)
    if scenario.cluster:
        merged = Map()
        merged.line, merged.key_lines = scenario.cluster_line, {}
        found = next((d for d in docs if isinstance(d.data, dict) and d.data.get("kind") == "ClusterSettings"), None)
        if found is not None:
            merged.update(found.data)
            merged.key_lines.update(getattr(found.data, "key_lines", {}))
            docs.remove(found)
        else:
            merged.update({"apiVersion": "emu.dev/v1alpha1", "kind": "ClusterSettings"})
        merged.update(scenario.cluster)
        merged.key_lines.update(scenario.cluster.key_lines)
        docs.append(RawDoc(scenario.file, scenario.cluster_line, merged))
    return build(docs)


def model_for(files, seed: int | None = None, stdin=None):
    """(Model, seed) for `-f` arguments: manifests as kubectl takes them, or
    one scenario file (its manifests and cluster settings, its seed)."""
    from emu.model import load as load_manifests
    from emu.scenario.spec import is_scenario, load as load_scenario

    scenarios = [f for f in files if is_scenario(f)]
    if not scenarios:
        return load_manifests(files, stdin=stdin), 1 if seed is None else seed
    if len(files) > 1:
        raise EmuError(f"{scenarios[0]}: a scenario brings its own manifests; give it alone with -f")
    spec = load_scenario(scenarios[0])
    return build_model(spec), spec.seed if seed is None else seed


class Run:
    def __init__(self, scenario: Scenario, capture: bool = True, progress=None):
        self.scenario = scenario
        # every step's options and expectations are checked before anything runs
        self.kinds = kinds.kinds()
        self.params = [self.kinds[s.kind][0](s) for s in scenario.steps]
        overrides = [AppOverride(a.selector, a.port, a.responses, a.namespace) for a in scenario.apps]
        self.cluster = Cluster(build_model(scenario), seed=scenario.seed, capture=False, apps=overrides)
        self.engine = self.cluster.engine
        if capture and scenario.capture is not None:
            ports = [p for p in default_taps(self.engine)
                     if any(fnmatch.fnmatchcase(p.name, pat) for pat in scenario.capture)]
            self.engine.capture(ports)
        # progress(done, total, label, unit): steps as they start, a traffic step's packets
        self.progress = progress or (lambda done, total, label, unit="steps": None)
        self.reports: list[StepReport] = []

    # -- what steps ask of the run ----------------------------------------------------
    def pod_by_ip(self, ip: str) -> str:
        """`pod (node)` for a pod IP (`node` itself for a node IP), else the IP."""
        for info in self.cluster.state.pods.values():
            if info.ip == ip and not info.host_network:
                return f"{info.name} ({info.node})"
        for node in self.cluster.state.nodes.values():
            if node.ip == ip:
                return node.name
        return ip

    def progress_packets(self, step: Step, sent: int, total: int) -> None:
        self.progress(sent, total, f"step {step.index}: {step.kind} {step.arg}", "packets")

    # -- running ---------------------------------------------------------------------
    def run(self) -> list[StepReport]:
        if self.scenario.steps:
            self._schedule(0, 0)
        self.engine.run()
        self.progress(len(self.reports), len(self.scenario.steps), "done")
        return self.reports

    def _schedule(self, i: int, earliest: int) -> None:
        step = self.scenario.steps[i]
        start = max(earliest, step.at_ns or 0, self.engine.now)
        self.engine.at(start, lambda e: self._begin(i))

    def _begin(self, i: int) -> None:
        step = self.scenario.steps[i]
        rep = StepReport(step, self.engine.now)
        self.reports.append(rep)
        self.progress(i, len(self.scenario.steps), rep.label)
        first_id, drops = self.engine.pool._next_id, self.engine.drops.copy()
        nxt = i + 1 < len(self.scenario.steps)

        def done(result: kinds.Result) -> None:
            if rep.result is not None:
                return
            rep.result, rep.finished_ns = result, self.engine.now
            rep.packets = self.engine.pool._next_id - first_id
            delta = self.engine.drops.sum(axis=0) - drops.sum(axis=0)
            rep.drops = [(describe(int(r)), int(delta[r])) for r in np.nonzero(delta)[0]]
            if nxt and step.wait:
                self._schedule(i + 1, self.engine.now)

        if nxt and not step.wait:  # first: a traffic step runs the clock itself while it lasts
            self._schedule(i + 1, self.engine.now)
        self.kinds[step.kind][1](self, step, self.params[i], done)


def run(scenario: Scenario, output: str | Path | None = None, pcap_dir: str | Path | None = None,
        progress=None) -> Report:
    """Run the scenario; write the capture to `output` (pcapng) and, if given,
    one classic pcap per interface to `pcap_dir`."""
    r = Run(scenario, capture=output is not None or pcap_dir is not None, progress=progress)
    reports = r.run()
    report = Report(scenario, r.cluster, reports)
    taps = r.engine.taps
    if output is not None:
        if taps is None:
            raise EmuError(f"{scenario.file}: capture is off (capture: false); run without -o")
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        report.frames, report.output = taps.write_pcapng(output, r.engine), output
    if pcap_dir is not None and taps is not None:
        taps.write_pcaps(pcap_dir)
    return report
