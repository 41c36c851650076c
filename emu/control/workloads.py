"""Workload controllers (Deployment, ReplicaSet, StatefulSet, DaemonSet) and the
scheduler.

Names, as the real controllers make them:

* Deployment ``web`` -> ReplicaSet ``web-<pod-template-hash>``. Kubernetes
  computes the hash as FNV-32a over a dump of the pod template, printed as
  a decimal number and re-encoded with ``rand.SafeEncodeString`` (each digit
  mapped into the alphabet below, so a hash looks like ``7c6d8f9b45``). emu
  hashes a canonical JSON dump of the template (labels, annotations, spec)
  the same way: stable, independent of the seed, changes with the template;
  the digits differ from a real cluster's (Go's spew dump cannot be reproduced).
* ReplicaSet ``rs`` and DaemonSet ``ds`` pods: ``<name>-<5 chars>``
  (``generateName``: the base cut to 58 characters, then 5 characters from
  ``bcdfghjklmnpqrstvwxz2456789``), drawn deterministically from
  (seed, namespace, owner, counter) -- another seed gives other suffixes.
* StatefulSet ``db`` pods: ``db-0`` .. ``db-<N-1>``, hostname = pod name,
  subdomain = ``spec.serviceName``; scale down removes the highest ordinals.

Scheduling (a deterministic stand-in for kube-scheduler's spreading score):
``spec.nodeName`` is honoured (an unknown node is an error); otherwise among
the nodes that are ready, schedulable (not ``unschedulable``), match the
``nodeSelector`` and have fewer than ``MAX_PODS`` pods (kubelet's default
maxPods), the one with the fewest pods wins, ties going to the earlier node
in node order. No such node: the pod stays Pending (node "" and ip ""), and
is scheduled when a node appears. DaemonSet pods are bound to every node that
matches their nodeSelector, ready or not, schedulable or not (the DaemonSet
controller adds the tolerations for that).

ReplicaSet scale-down removes, as ``ActivePodsWithRanks`` orders them:
unscheduled first, then not ready, then pods on the node holding most of the
set's pods, then the newest.
"""
from __future__ import annotations

import hashlib
import heapq
import json
from typing import Mapping

from emu.model.objects import PodTemplate, Workload

ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
MAX_GENERATED_NAME_BASE = 63 - 5           # names.SimpleNameGenerator
MAX_PODS = 110                             # kubelet --max-pods default


_TO_ALPHANUM = bytes(ord(ALPHANUMS[b % 27]) for b in range(256))


def random_suffix(seed: int, *parts, length: int = 5) -> str:
    """``length`` characters from ALPHANUMS, a function of the seed and parts."""
    key = "\0".join(map(str, (seed,) + parts)).encode()
    return hashlib.blake2b(key, digest_size=16).digest()[:length].translate(_TO_ALPHANUM).decode()


def generate_name(base: str, seed: int, *parts) -> str:
    """``metadata.generateName`` as the API server resolves it."""
    return base[:MAX_GENERATED_NAME_BASE] + random_suffix(seed, *parts)


def safe_encode(s: str) -> str:
    return "".join(ALPHANUMS[ord(c) % 27] for c in s)


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _canon(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _canon(getattr(obj, k)) for k in obj.__dataclass_fields__ if k != "source"}
    if isinstance(obj, dict) or (not isinstance(obj, (str, int, tuple, list, type(None)))
                                 and isinstance(obj, Mapping)):
        return {str(k): _canon(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (tuple, list)):
        return [_canon(v) for v in obj]
    return obj


def template_hash(template: PodTemplate) -> str:
    """The ``pod-template-hash`` label value of a Deployment's ReplicaSet."""
    data = json.dumps(_canon(template), sort_keys=True, separators=(",", ":")).encode()
    return safe_encode(str(fnv32a(data)))


def replicaset_name(deploy: Workload, hash_: str | None = None) -> str:
    return f"{deploy.name}-{hash_ or template_hash(deploy.template)}"


class Scheduler:
    """Fewest pods first, then node order, among eligible nodes."""

    def __init__(self):
        self.order: dict[str, int] = {}
        self.labels: dict[str, Mapping[str, str]] = {}
        self.count: dict[str, int] = {}
        self.ready: dict[str, bool] = {}
        self.unschedulable: dict[str, bool] = {}
        self._heaps: dict[tuple, list] = {}

    def add_node(self, name: str, labels: Mapping[str, str], unschedulable: bool = False) -> None:
        self.order.setdefault(name, len(self.order))
        self.labels[name] = labels
        self.count.setdefault(name, 0)
        self.ready[name] = True
        self.unschedulable[name] = unschedulable
        self._heaps.clear()

    def set_ready(self, name: str, ready: bool) -> None:
        self.ready[name] = ready
        self._heaps.clear()

    def eligible(self, name: str, node_selector: Mapping[str, str]) -> bool:
        labels = self.labels[name]
        return (self.ready[name] and not self.unschedulable[name]
                and all(labels.get(k) == v for k, v in node_selector.items()))

    def pick(self, node_selector: Mapping[str, str]) -> str | None:
        key = tuple(sorted(node_selector.items()))
        heap = self._heaps.get(key)
        if heap is None:
            heap = [(self.count[n], i, n) for n, i in self.order.items()
                    if self.eligible(n, node_selector)]
            heapq.heapify(heap)
            self._heaps[key] = heap
        count = self.count
        while heap:
            c, i, n = heap[0]
            actual = count[n]
            if actual != c:  # stale: the node got pods through another heap
                heapq.heapreplace(heap, (actual, i, n))
                continue
            return n if c < MAX_PODS else None
        return None

    def place(self, node: str) -> None:
        self.count[node] += 1

    def unplace(self, node: str) -> None:
        self.count[node] -= 1
        self._heaps.clear()  # a count went down: rebuild lazily


def scale_down_order(pods, per_node: Mapping[str, int], seq: Mapping) -> list:
    """Pods of one ReplicaSet in the order the controller deletes them."""
    return sorted(pods, key=lambda p: (p.node != "", p.ready, -per_node.get(p.node, 0),
                                       -seq[p.key]))
