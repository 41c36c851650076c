"""Steps that change the cluster, through the controllers (as kubectl and
the node lifecycle controller would), and sleep.

| step | argument | options |
|---|---|---|
| scale | workload (`web`, `statefulset/db`) | replicas, namespace |
| delete | pod name (glob ok) | namespace |
| apply | manifest file(s), relative to the scenario | - |
| fail | node | notReadyAfter (node-monitor-grace-period, 40s) |
| sleep | duration | - |
"""
from __future__ import annotations

import os

from emu.errors import EmuError
from emu.scenario.spec import Step, duration_ns
from emu.scenario.steps import SECOND, Result, opt, pod_key


SCALABLE = {"": None, "deployment": "Deployment", "deploy": "Deployment", "replicaset": "ReplicaSet",
            "rs": "ReplicaSet", "statefulset": "StatefulSet", "sts": "StatefulSet"}


def scale_parse(step: Step) -> dict:
    f = opt(step, "scale")
    kind, _, name = f.str().rpartition("/")
    if kind.lower() not in SCALABLE:
        f.fail(f"{kind!r} cannot be scaled: use deployment/, replicaset/ or statefulset/")
    return {"kind": SCALABLE[kind.lower()], "name": name,
            "replicas": opt(step, "replicas").require().int(lo=0, hi=100_000),
            "namespace": opt(step, "namespace").str("default")}


def scale_start(run, step: Step, p: dict, done) -> None:
    from emu.control import cluster as controllers

    try:
        controllers.scale(run.cluster.state, None, p["namespace"], p["name"], p["replicas"], p["kind"])
    except EmuError as e:
        step.fail(str(e), "scale")
    run.cluster.sync()
    done(Result(f"{p['name']}: {p['replicas']} replicas"))


def delete_parse(step: Step) -> dict:
    return {"name": opt(step, "delete").str().removeprefix("pod/"),
            "namespace": opt(step, "namespace").str("default")}


def delete_start(run, step: Step, p: dict, done) -> None:
    key = pod_key(run, step, p["name"], "delete", p["namespace"])
    run.cluster.delete_pod(*key)
    done(Result(f"deleted {key[0]}/{key[1]}"))


def apply_parse(step: Step) -> dict:
    f = opt(step, "apply")
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
    return {"node": opt(step, "fail").str(),
            "grace": duration_ns(opt(step, "notReadyAfter"), 40 * SECOND)}


def fail_start(run, step: Step, p: dict, done) -> None:
    if p["node"] not in run.cluster.fabric.nodes:
        step.fail(f"no node {p['node']!r} (nodes: {', '.join(run.cluster.fabric.nodes)})", "fail")
    run.cluster.fail_node(p["node"], not_ready_after_ns=p["grace"])
    done(Result(f"{p['node']} down; NotReady after {p['grace'] / SECOND:g} s"))


def sleep_parse(step: Step) -> dict:
    return {"ns": duration_ns(opt(step, "sleep"))}


def sleep_start(run, step: Step, p: dict, done) -> None:
    run.engine.at(run.engine.now + p["ns"], lambda e: done(Result(f"{p['ns'] / SECOND:g} s")))
