"""emu.model: manifests -> validated typed objects, errors that name file,
line, object and field; label selectors against a tiny reference."""

from __future__ import annotations

import io
import ipaddress
import os
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.errors import EmuError
from emu.model import LabelSelector, ManifestError, Requirement, load, matches

GOOD = os.path.join(os.path.dirname(__file__), "data", "manifests", "good")


# ---------------------------------------------------------------- good input


@pytest.fixture(scope="module")
def model():
    return load([GOOD])


def test_settings(model):
    s = model.settings
    assert s.nodes == ("node-a", "node-b", "node-c") and s.nodes_given
    assert model.node_names() == ("node-a", "node-b", "node-c")
    assert s.pod_cidr == ipaddress.IPv4Network("10.244.0.0/16")
    assert s.kube_proxy_mode == "ipvs" and s.ipvs_scheduler == "mh"
    assert (s.cluster_domain, s.cni, s.node_port_range, s.node_cidr_mask_size) == (
        "cluster.local", "flannel", (30000, 32767), 24)
    assert str(s.kubernetes_service_ip) == "10.96.0.1" and str(s.dns_service_ip) == "10.96.0.10"
    assert s.source.file.endswith("00-settings.yaml") and s.source.line == 1


def test_defaults_without_settings():
    m = load("-", stdin="")
    assert m.settings.service_cidr == ipaddress.IPv4Network("10.96.0.0/12")
    assert not m.settings.nodes_given and m.node_names() == ("node-1", "node-2")
    assert list(m.namespaces) == ["default", "kube-system", "kube-public", "kube-node-lease"]


def test_deployment(model):
    d = model.deployments["shop", "web"]
    assert d.replicas == 3 and d.kind == "Deployment"
    assert dict(d.selector.match_labels) == {"app": "web"}
    assert d.selector.match_expressions == (Requirement("tier", "In", ("frontend",)),)
    assert d.template.labels == {"app": "web", "tier": "frontend"}
    assert d.template.spec.node_selector == {"disk": "ssd"}
    assert [(p.name, p.container_port, p.protocol) for p in d.template.spec.ports()] == [
        ("http", 8080, "TCP"), ("metrics", 9090, "TCP")]
    assert d.template.spec.named_port("http") == 8080
    assert d.source.line == 8 and d.source.line_of("spec.replicas") == 15
    assert model.namespaces["shop"].labels == {"team": "web", "kubernetes.io/metadata.name": "shop"}


def test_services(model):
    web = model.services["shop", "web"]
    assert web.type == "ClusterIP" and web.selector == {"app": "web"} and not web.headless
    assert [(p.name, p.port, p.target_port) for p in web.ports] == [
        ("http", 80, "http"), ("metrics", 9090, 9090)]
    assert web.session_affinity == "ClientIP" and web.session_affinity_timeout == 10800
    assert web.external_traffic_policy is None and web.internal_traffic_policy == "Cluster"
    assert model.services["shop", "web-headless"].headless
    np = model.services["shop", "web-np"]
    assert np.ports[0].node_port == 30080 and np.external_traffic_policy == "Local"
    db = model.services["default", "db"]
    assert db.type == "ExternalName" and db.external_name == "db.example.com" and db.ports == ()
    legacy = model.services["default", "legacy"]
    assert legacy.selector is None and legacy.cluster_ip == "10.96.5.5"
    lb = model.services["default", "lb"]
    assert lb.load_balancer_ingress_ips == ("203.0.113.7",)
    assert lb.allocate_load_balancer_node_ports is True and lb.external_traffic_policy == "Cluster"


def test_endpoint_slice(model):
    legacy = model.services["default", "legacy"]
    (sl,) = model.slices_for(legacy)
    assert sl.address_type == "IPv4" and sl.ports[0].port == 5432
    a, b = sl.endpoints
    assert (a.ready, a.serving, a.terminating) == (True, True, False)  # API defaults
    assert (b.ready, b.serving, b.terminating, b.node_name) == (False, True, True, "node-b")


def test_list_pod_statefulset_and_ignored(model):
    pod = model.pods["default", "client"]
    assert pod.spec.node_name == "node-a" and pod.phase == "Running" and pod.ready is True
    assert pod.pod_ips == ("10.244.0.5",)
    assert pod.source.line == 4 and pod.source.file.endswith("list.yaml")
    ss = model.statefulsets["default", "cache"]
    assert ss.service_name == "cache" and ss.replicas == 2
    assert [(i.kind, i.name, i.line) for i in model.ignored] == [
        ("apiextensions.k8s.io/v1/CustomResourceDefinition", "widgets.example.com", 1),
        ("example.com/v1/Widget", "w1", 11),
    ]


def test_stdin_and_files_agree():
    path = os.path.join(GOOD, "app.yaml")
    with open(path) as f:
        text = f.read()
    a = load([path])
    b = load(["-"], stdin=io.StringIO(text))
    assert a.services == b.services and a.deployments == b.deployments  # source is not compared
    assert b.services["shop", "web"].source.file == "<stdin>"
    assert a.services["shop", "web"].source.line == b.services["shop", "web"].source.line


def test_typed_list_and_merge_keys():
    m = load("-", stdin=textwrap.dedent("""\
        apiVersion: v1
        kind: ServiceList
        items:
          - apiVersion: v1
            kind: Service
            metadata: {name: a}
            spec:
              ports: &p [{port: 80}]
          - apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec: {ports: *p}
        """))
    assert [s.name for s in m.services.values()] == ["a", "b"]


# ---------------------------------------------------------------- bad input

SVC = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
"""

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: c
          image: nginx
"""

SETTINGS = "apiVersion: emu.dev/v1alpha1\nkind: ClusterSettings\n"

BAD = [
    # YAML syntax
    ("kind: Service\nkind: Pod\n", "x.yaml:2: duplicate key 'kind' (first at line 1)"),
    ("- a\n- b\n", "x.yaml:1: a manifest document must be a mapping with apiVersion and kind, not a list"),
    ("apiVersion: v1\nmetadata: {name: x}\n", "x.yaml:1: kind: required field is missing"),
    # services
    (SVC + "    - port: 70000\n",
     "x.yaml:8: Service default/web: spec.ports[0].port: 70000 is out of range 1-65535"),
    (SVC + "    - targetPort: 80\n",
     "x.yaml:8: Service default/web: spec.ports[0].port: required field is missing"),
    (SVC + "    - port: '80'\n",
     "x.yaml:8: Service default/web: spec.ports[0].port: must be an integer, not a string ('80')"),
    (SVC + "    - {name: a, port: 80}\n    - port: 81\n",
     "x.yaml:9: Service default/web: spec.ports[1].name: required when the Service has more than one port"),
    (SVC + "    - {name: a, port: 80}\n    - {name: a, port: 81}\n",
     "x.yaml:9: Service default/web: spec.ports[1].name: duplicate port name 'a' (also spec.ports[0])"),
    (SVC + "    - port: 80\n      nodePort: 30001\n",
     "x.yaml:9: Service default/web: spec.ports[0].nodePort: may only be set when type is NodePort or LoadBalancer, not ClusterIP"),
    (SVC + "    - port: 80\n      nodePort: 40000\n  type: NodePort\n",
     "x.yaml:9: Service default/web: spec.ports[0].nodePort: 40000 is outside the NodePort range 30000-32767"),
    (SVC + "    - port: 80\n      nodePort: 30001\n  type: NodePort\n---\n"
     + SVC.replace("web", "api") + "    - port: 80\n      nodePort: 30001\n  type: NodePort\n",
     "x.yaml:20: Service default/api: spec.ports[0].nodePort: 30001 is already taken by Service default/web (x.yaml:9)"),
    (SVC + "    - port: 80\n  clusterIP: 10.0.0.1\n",
     "x.yaml:9: Service default/web: spec.clusterIP: 10.0.0.1 is not in the serviceCIDR 10.96.0.0/12"),
    (SVC + "    - port: 80\n  clusterIP: 10.96.0.10\n",
     "x.yaml:9: Service default/web: spec.clusterIP: 10.96.0.10 is reserved for the Service kube-system/kube-dns"),
    (SVC + "    - port: 80\n  clusterIP: None\n  type: NodePort\n",
     "x.yaml:9: Service default/web: spec.clusterIP: may be 'None' (headless) only for type ClusterIP, not NodePort"),
    (SVC + "    - port: 80\n  type: Nodeport\n",
     "x.yaml:9: Service default/web: spec.type: 'Nodeport' is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
    (SVC + "    - port: 80\n  externalTrafficPolicy: Local\n",
     "x.yaml:9: Service default/web: spec.externalTrafficPolicy: may only be set for externally reachable Services (type NodePort or LoadBalancer, or with externalIPs)"),
    (SVC + "    - port: 80\n      targetPort: http_port\n",
     "x.yaml:9: Service default/web: spec.ports[0].targetPort: 'http_port' may contain only lowercase letters, digits and '-'"),
    (SVC + "    - port: 80\n  selectr: {app: web}\n",
     'x.yaml:9: Service default/web: spec.selectr: unknown field (did you mean "selector"?)'),
    (SVC + "    - port: 80\n  externalIPs: [1.2.3.400]\n",
     "x.yaml:9: Service default/web: spec.externalIPs[0]: '1.2.3.400' is not a valid IP address"),
    (SVC.replace("web}", "true}") + "    - port: 80\n",
     "x.yaml:6: Service default/web: spec.selector.app: must be a string, not a boolean (True); quote it"),
    (SVC + "    - port: 80\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}\n",
     "x.yaml:9: Service default/web: spec.sessionAffinityConfig: may only be set when sessionAffinity is ClientIP"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 80}]}\n",
     "x.yaml:3: Service default/Web: metadata.name: 'Web' must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {}\n",
     "x.yaml:4: Service default/web: spec.ports: required field is missing (only headless and ExternalName Services may have no ports)"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {type: ExternalName}\n",
     "x.yaml:4: Service default/db: spec.externalName: required field is missing"),
    # duplicates
    (SVC + "    - port: 80\n---\n" + SVC + "    - port: 81\n",
     "x.yaml:13: Service default/web: metadata.name: defined twice (first at x.yaml:1)"),
    # workloads
    (DEPLOY.replace("  selector:\n    matchLabels: {app: web}\n", ""),
     "x.yaml:5: Deployment default/web: spec.selector: required field is missing"),
    (DEPLOY.replace("matchLabels: {app: web}", "matchLabels: {app: api}"),
     "x.yaml:10: Deployment default/web: spec.template.metadata.labels: selector 'app=api' does not match the template labels (app=web)"),
    (DEPLOY.replace("spec:\n  selector", "spec:\n  replica: 2\n  selector"),
     'x.yaml:6: Deployment default/web: spec.replica: unknown field (did you mean "replicas"?)'),
    (DEPLOY.replace("spec:\n  selector", "spec:\n  replicas: -1\n  selector"),
     "x.yaml:6: Deployment default/web: spec.replicas: -1 must be at least 0"),
    (DEPLOY.replace("    matchLabels: {app: web}",
                    "    matchExpressions: [{key: app, operator: In}]"),
     "x.yaml:7: Deployment default/web: spec.selector.matchExpressions[0].values: must be non-empty when operator is In"),
    (DEPLOY.replace("    matchLabels: {app: web}",
                    "    matchExpressions: [{key: app, operator: Exists, values: [x]}]"),
     "x.yaml:7: Deployment default/web: spec.selector.matchExpressions[0].values: must be empty when operator is Exists"),
    (DEPLOY + "          ports:\n            - name: http\n",
     "x.yaml:16: Deployment default/web: spec.template.spec.containers[0].ports[0].containerPort: required field is missing"),
    (DEPLOY + "          ports:\n            - {containerPort: 80, protocol: tcp}\n",
     "x.yaml:16: Deployment default/web: spec.template.spec.containers[0].ports[0].protocol: 'tcp' is not one of TCP, UDP, SCTP"),
    (DEPLOY.replace("apps/v1", "extensions/v1beta1"),
     "x.yaml:1: Deployment default/web: apiVersion: 'extensions/v1beta1' is not served for Deployment by current Kubernetes; use apps/v1"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Prod}\nspec: {containers: [{name: c, image: i}]}\n",
     "x.yaml:3: Pod Prod/p: metadata.namespace: 'Prod' must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
     "x.yaml:4: Pod default/p: spec.containers: must have at least one container"),
    # endpoint slices
    ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n"
     "endpoints:\n  - addresses: [10.0.0.300]\n",
     "x.yaml:6: EndpointSlice default/s: endpoints[0].addresses[0]: '10.0.0.300' is not a valid IPv4 address"),
    # settings
    (SETTINGS + "podCIDR: 10.244.0.0\n",
     "x.yaml:3: ClusterSettings: podCIDR: '10.244.0.0' is not a CIDR (expected address/prefix, e.g. 10.244.0.0/16)"),
    (SETTINGS + "podCIDR: 10.244.1.0/16\n",
     "x.yaml:3: ClusterSettings: podCIDR: '10.244.1.0/16' has host bits set (did you mean 10.244.0.0/16?)"),
    (SETTINGS + "podCIDR: 10.96.0.0/16\n",
     "x.yaml:3: ClusterSettings: podCIDR: podCIDR 10.96.0.0/16 and serviceCIDR 10.96.0.0/12 overlap"),
    (SETTINGS + "cni: weave\n",
     "x.yaml:3: ClusterSettings: cni: 'weave' is not one of flannel, calico, cilium"),
    (SETTINGS + "ipvsScheduler: mh\n",
     "x.yaml:3: ClusterSettings: ipvsScheduler: only applies when kubeProxyMode is ipvs"),
    (SETTINGS + "nodePortRange: 30000:32767\n",
     "x.yaml:3: ClusterSettings: nodePortRange: '30000:32767' must be a range like 30000-32767"),
    (SETTINGS + "nodeCIDRMaskSize: 8\n",
     "x.yaml:3: ClusterSettings: nodeCIDRMaskSize: /8 is larger than podCIDR 10.244.0.0/16"),
    (SETTINGS + "nodes: 0\n", "x.yaml:3: ClusterSettings: nodes: 0 is out of range 1-100000"),
    (SETTINGS + "node: 3\n", 'x.yaml:3: ClusterSettings: node: unknown field (did you mean "nodes"?)'),
    # nodes
    ("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.0.0.0/24}\n",
     "x.yaml:4: Node n1: spec.podCIDR: 10.0.0.0/24 is outside the cluster podCIDR 10.244.0.0/16"),
    ("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.0.0/24}\n---\n"
     "apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nspec: {podCIDRs: [10.244.0.0/25]}\n",
     "x.yaml:9: Node n2: spec.podCIDRs[0]: 10.244.0.0/25 overlaps 10.244.0.0/24 of Node n1 (x.yaml:1)"),
    (SETTINGS + "nodes: 2\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
     "x.yaml:3: ClusterSettings: nodes: is set, but the manifests also define Node objects (n1 at x.yaml:5); keep one of the two"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 1)[1][:60] for _, m in BAD])
def test_bad_input(tmp_path, text, message):
    (tmp_path / "x.yaml").write_text(text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ManifestError) as info:
            load(["x.yaml"])
    finally:
        os.chdir(cwd)
    assert str(info.value) == message
    assert isinstance(info.value, EmuError)


@pytest.mark.parametrize("text,line", [
    ("a: [1, 2\nb: 3\n", 2), ("a:\n\tb: 1\n", 2), ("a: 'open\n", 2), ("a: *nope\n", 1),
    ("a: !!int x\n", 1), ("a: !custom 1\n", 1), ("[" * 5000, 1),
])
def test_yaml_syntax_errors(text, line):
    """The wording comes from PyYAML (or libyaml); the line is ours to get right."""
    with pytest.raises(ManifestError) as info:
        load("-", stdin=text)
    assert str(info.value).startswith(f"<stdin>:{line}: invalid YAML")
    assert info.value.line == line


def test_error_parts(tmp_path):
    p = tmp_path / "services.yaml"
    p.write_text(SVC + "    - name: a\n      port: 80\n    - name: b\n      port: 70000\n")
    with pytest.raises(ManifestError) as info:
        load([str(p)])
    e = info.value
    assert (e.file, e.line, e.obj, e.path) == (str(p), 11, "Service default/web", "spec.ports[1].port")


def test_path_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such file or folder"):
        load([str(tmp_path / "missing.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="folder has no"):
        load([str(tmp_path / "empty")])
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load([str(tmp_path / "bin.yaml")])


def test_folder_order_and_recursion(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "svc.yml").write_text(SVC.replace("web", "two") + "    - port: 80\n")
    (tmp_path / "a.yaml").write_text(SVC.replace("web", "one") + "    - port: 80\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    m = load([str(tmp_path)])
    assert [s.name for s in m.services.values()] == ["one", "two"]


@given(st.text(max_size=200))
def test_never_a_traceback(text):
    try:
        load("-", stdin=text)
    except ManifestError:
        pass


def _good_docs() -> list:
    import yaml

    docs = []
    for name in sorted(os.listdir(GOOD)):
        with open(os.path.join(GOOD, name)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


GOOD_DOCS = _good_docs()
junk_st = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.text(max_size=8),
              st.sampled_from(["None", "TCP", "http", "10.96.0.1", "10.244.0.0/16", "In"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def _mutate(doc, path: list[int], value):
    """Replace (or delete, when value is the string "<del>") one node chosen by path."""
    import copy

    doc = copy.deepcopy(doc)
    node = doc
    for step in path:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if not children:
            break
        key, child = children[step % len(children)]
        if not isinstance(child, (dict, list)) or step % 3 == 0:
            if value == "<del>":
                del node[key]
            else:
                node[key] = value
            return doc
        node = child
    return doc


@given(st.sampled_from(range(len(GOOD_DOCS))), st.lists(st.integers(0, 50), min_size=1, max_size=6),
       st.one_of(junk_st, st.just("<del>")))
def test_mutated_manifests_never_traceback(i, path, value):
    """Any one field of a good manifest replaced by junk (or removed): either it
    still loads or it is a ManifestError, never another exception."""
    import yaml

    text = yaml.safe_dump(_mutate(GOOD_DOCS[i], path, value))
    try:
        load("-", stdin=text)
    except ManifestError as e:
        assert str(e).startswith("<stdin>")


# ---------------------------------------------------------------- selectors

KEYS = ["a", "b", "c"]
VALUES = ["x", "y", "z"]
labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
values_st = st.lists(st.sampled_from(VALUES), min_size=1, max_size=3, unique=True).map(tuple)
req_st = st.one_of(
    st.builds(Requirement, st.sampled_from(KEYS), st.sampled_from(["In", "NotIn"]), values_st),
    st.builds(Requirement, st.sampled_from(KEYS), st.sampled_from(["Exists", "DoesNotExist"])),
)
selector_st = st.builds(
    lambda ml, exprs: LabelSelector.of(ml, *exprs), labels_st, st.lists(req_st, max_size=3))


def ref_requirement(r: Requirement, labels: dict) -> bool:
    """The definition in words, one branch per operator."""
    has = r.key in labels
    if r.operator == "In":
        return has and labels[r.key] in r.values
    if r.operator == "NotIn":
        return (not has) or labels[r.key] not in r.values
    if r.operator == "Exists":
        return has
    return not has


def ref_selector(sel: LabelSelector, labels: dict) -> bool:
    for k, v in sel.match_labels:
        if labels.get(k) != v:
            return False
    return all(ref_requirement(r, labels) for r in sel.match_expressions)


@given(selector_st, labels_st)
def test_selector_matches_reference(sel, labels):
    assert matches(sel, labels) == ref_selector(sel, labels)


@given(labels_st, labels_st)
def test_equality_map_selector(sel, labels):
    assert matches(sel, labels) == all(labels.get(k) == v for k, v in sel.items())


@given(labels_st)
def test_empty_and_nil(labels):
    assert matches(LabelSelector(), labels)
    assert matches({}, labels)
    assert not matches(None, labels)


@given(st.sampled_from(KEYS), values_st, labels_st)
def test_notin_matches_missing_key(key, values, labels):
    labels = {k: v for k, v in labels.items() if k != key}
    assert matches(LabelSelector.of(None, Requirement(key, "NotIn", values)), labels)
    assert not matches(LabelSelector.of(None, Requirement(key, "In", values)), labels)


def test_requirement_rejects_bad_values():
    with pytest.raises(ValueError):
        Requirement("a", "In")
    with pytest.raises(ValueError):
        Requirement("a", "Exists", ("x",))
    with pytest.raises(ValueError):
        Requirement("a", "Gt", ("1",))
    sel = LabelSelector.of({"app": "web"}, Requirement("env", "NotIn", ("dev", "qa")),
                           Requirement("x", "DoesNotExist"))
    assert str(sel) == "app=web,env notin (dev,qa),!x"
