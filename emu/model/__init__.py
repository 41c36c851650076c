"""The input layer: ordinary Kubernetes YAML -> validated, typed objects.

    from emu.model import load
    model = load(["manifests/"])          # files, folders, "-" for stdin
    model.services[("default", "web")].ports[0].target_port

Every bad input raises ``ManifestError`` (an ``EmuError``) whose message
names file, line, object and field, e.g.
``services.yaml:12: Service default/web: spec.ports[0].port: 70000 is out of range 1-65535``.
No behaviour lives here: controllers (emu/control) turn the model into tables.
"""

from .load import ManifestError, RawDoc, parse_text, read_docs
from .manifests import Manifests, Model, build, load
from .objects import (
    ClusterSettings, Container, ContainerPort, Endpoint, EndpointPort, EndpointSlice, Ignored,
    Namespace, Node, NodeAddress, ObjectRef, Pod, PodSpec, PodTemplate, Service, ServicePort,
    Source, Workload,
)
from .selectors import LabelSelector, Requirement, matches

__all__ = [
    "ClusterSettings", "Container", "ContainerPort", "Endpoint", "EndpointPort", "EndpointSlice",
    "Ignored", "LabelSelector", "ManifestError", "Manifests", "Model", "Namespace", "Node",
    "NodeAddress", "ObjectRef", "Pod", "PodSpec", "PodTemplate", "RawDoc", "Requirement",
    "Service", "ServicePort", "Source", "Workload", "build", "load", "matches", "parse_text",
    "read_docs",
]
