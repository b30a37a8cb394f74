"""Policy checks on one rendered chart (the output of `helm template --include-crds`).

Called by .ci/chart-check once per values variant. It
  - checks what the operator's security and RBAC promises depend on (no `delete` on Secrets,
    the hardened securityContext, namespaced RBAC in watchNamespaces mode, ...),
  - validates the Prometheus Operator objects, which kubernetes-validate does not know,
    against the small schemas in .ci/schemas/ and parses every PromQL expression,
  - writes the Kubernetes-native objects to a file for kubernetes-validate.

Usage: chart_check.py RENDERED.yaml NATIVE_OUT.yaml EXPECT_FILE
EXPECT_FILE is a JSON object with what this variant must render:
  {"release_namespace": "...", "watch_namespaces": [...], "replicas": N,
   "pdb": bool, "monitoring": bool, "network_policy": bool, "aggregated_roles": bool}
Exit status 1 with one line per finding when anything is wrong.
"""

import json
import pathlib
import re
import sys

import jsonschema
import promql_parser
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"
FOREIGN_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
}
# The metric names the operator exposes (histograms also as _bucket/_sum/_count).
METRICS = {
    "reconnect_reconcile_total",
    "reconnect_reconcile_errors_total",
    "reconnect_reconcile_duration_seconds",
    "reconnect_credential_phase",
    "reconnect_credential_expiry_timestamp_seconds",
    "reconnect_credential_expiry_warning_seconds",
    "reconnect_provider_requests_total",
    "reconnect_provider_request_duration_seconds",
    "reconnect_rotations_total",
    "reconnect_credentials",
    "reconnect_queue_depth",
    "reconnect_queue_wait_seconds",
    "reconnect_provider_budget_wait_seconds",
    "reconnect_provider_budget_paused_hosts",
    "reconnect_rollouts_in_flight",
    "reconnect_rollouts_waiting",
}
HISTOGRAMS = {
    "reconnect_reconcile_duration_seconds",
    "reconnect_provider_request_duration_seconds",
    "reconnect_queue_wait_seconds",
    "reconnect_provider_budget_wait_seconds",
}
ALERTS = {
    "ReconnectCredentialConnectionLost",
    "ReconnectCredentialPermissionMismatch",
    "ReconnectCredentialExpiringSoon",
    "ReconnectReconcileErrors",
}
WORKLOAD_RULES = [
    (("reconnect.dev",), ("connectorcredentials", "integrations"), {"get", "list", "watch", "patch", "update"}),
    (("reconnect.dev",), ("connectorcredentials/status", "integrations/status"), {"get", "patch", "update"}),
    (("reconnect.dev",), ("connectorcredentials/finalizers", "integrations/finalizers"), {"update"}),
    (("",), ("secrets",), {"get", "list", "watch", "create", "update"}),
    (("events.k8s.io",), ("events",), {"create", "patch"}),
    (("apps",), ("deployments", "statefulsets", "daemonsets"), {"get", "patch"}),
]


class Findings(list):
    def check(self, ok, message):
        if not ok:
            self.append(message)
        return ok


def ref(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def granted(rules, group, resource):
    """The verbs a list of PolicyRules grants on group/resource (wildcards included)."""
    verbs = set()
    for rule in rules or []:
        groups = rule.get("apiGroups") or []
        resources = rule.get("resources") or []
        if (group in groups or "*" in groups) and (resource in resources or "*" in resources):
            verbs |= set(rule.get("verbs") or [])
    return verbs


def check_rbac(docs, expect, f):
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        secret_verbs = granted(role.get("rules"), "", "secrets")
        f.check(
            not secret_verbs & {"delete", "deletecollection", "*"},
            f"{ref(role)} grants {sorted(secret_verbs & {'delete', 'deletecollection', '*'})} on secrets: "
            "the operator never deletes a Secret (garbage collection does, through ownerReferences)",
        )
        for rule in role.get("rules") or []:
            f.check("*" not in (rule.get("verbs") or []), f"{ref(role)} has a wildcard verb: {rule}")
            f.check("*" not in (rule.get("resources") or []), f"{ref(role)} has a wildcard resource: {rule}")

    release_ns = expect["release_namespace"]
    watched = expect["watch_namespaces"]
    operator_roles = [r for r in roles if r["metadata"]["name"] not in ("reconnect-view", "reconnect-edit")]
    cluster_roles = [r for r in operator_roles if r["kind"] == "ClusterRole"]
    if watched:
        f.check(not cluster_roles, f"watchNamespaces is set but ClusterRoles were rendered: {[ref(r) for r in cluster_roles]}")
        f.check(
            not [d for d in docs if d["kind"] == "ClusterRoleBinding"],
            "watchNamespaces is set but a ClusterRoleBinding was rendered",
        )
        scopes = {ns: [r for r in operator_roles if r["kind"] == "Role" and r["metadata"]["namespace"] == ns] for ns in watched}
    else:
        f.check(len(cluster_roles) == 1, f"expected one operator ClusterRole, got {[ref(r) for r in cluster_roles]}")
        scopes = {"(cluster)": cluster_roles}
    for scope, scope_roles in scopes.items():
        rules = [rule for r in scope_roles for rule in r.get("rules") or []]
        for groups, resources, verbs in WORKLOAD_RULES:
            for group in groups:
                for resource in resources:
                    have = granted(rules, group, resource)
                    f.check(have == verbs, f"{scope}: {group or 'core'}/{resource} verbs are {sorted(have)}, want {sorted(verbs)}")

    lease_roles = [r for r in roles if granted(r.get("rules"), "coordination.k8s.io", "leases")]
    f.check(
        len(lease_roles) == 1 and lease_roles[0]["kind"] == "Role" and lease_roles[0]["metadata"]["namespace"] == release_ns,
        f"Lease access must be one Role in {release_ns}, got {[ref(r) for r in lease_roles]}",
    )
    if lease_roles:
        have = granted(lease_roles[0]["rules"], "coordination.k8s.io", "leases")
        f.check(have == {"get", "create", "update", "patch"}, f"lease verbs are {sorted(have)}")

    # Every Role/ClusterRole the operator holds must be bound to its ServiceAccount.
    sa = [d for d in docs if d["kind"] == "ServiceAccount"]
    f.check(len(sa) == 1, f"expected one ServiceAccount, got {len(sa)}")
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for role in operator_roles:
        bound = [
            b for b in bindings
            if b["roleRef"]["kind"] == role["kind"] and b["roleRef"]["name"] == role["metadata"]["name"]
            and b["metadata"].get("namespace") == role["metadata"].get("namespace")
            and any(s["kind"] == "ServiceAccount" and sa and s["name"] == sa[0]["metadata"]["name"]
                    and s["namespace"] == release_ns for s in b.get("subjects") or [])
        ]
        f.check(len(bound) == 1, f"{ref(role)} is not bound (exactly once) to the operator's ServiceAccount")

    aggregated = {r["metadata"]["name"]: r for r in roles if r["metadata"]["name"] in ("reconnect-view", "reconnect-edit")}
    if expect["aggregated_roles"]:
        view, edit = aggregated.get("reconnect-view"), aggregated.get("reconnect-edit")
        if f.check(view and edit, "reconnect-view / reconnect-edit missing"):
            f.check(view["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view") == "true", "reconnect-view lacks aggregate-to-view")
            for label in ("aggregate-to-edit", "aggregate-to-admin"):
                f.check(edit["metadata"]["labels"].get(f"rbac.authorization.k8s.io/{label}") == "true", f"reconnect-edit lacks {label}")
            for kind in ("connectorcredentials", "integrations"):
                f.check(granted(view["rules"], "reconnect.dev", kind) == {"get", "list", "watch"}, f"reconnect-view verbs on {kind}")
                f.check(
                    granted(edit["rules"], "reconnect.dev", kind) == {"get", "list", "watch", "create", "update", "patch", "delete"},
                    f"reconnect-edit verbs on {kind}",
                )
                f.check(not granted(edit["rules"], "reconnect.dev", kind + "/status"), f"reconnect-edit must not write {kind}/status")
    else:
        f.check(not aggregated, "aggregated roles rendered although rbac.aggregatedRoles is false")


def check_deployment(docs, expect, f):
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if not f.check(len(deployments) == 1, f"expected one Deployment, got {len(deployments)}"):
        return
    dep = deployments[0]
    f.check(dep["spec"]["replicas"] == expect["replicas"], f"replicas {dep['spec']['replicas']}, want {expect['replicas']}")
    pod = dep["spec"]["template"]["spec"]
    f.check(pod.get("automountServiceAccountToken") is True, "pod automountServiceAccountToken must be true")
    psc = pod.get("securityContext") or {}
    f.check(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    f.check(psc.get("runAsUser") == 65532, "pod securityContext.runAsUser must be 65532")
    f.check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "pod seccompProfile must be RuntimeDefault")
    containers = pod["containers"]
    if not f.check(len(containers) == 1, "expected one container"):
        return
    c = containers[0]
    sc = c.get("securityContext") or {}
    f.check(sc.get("runAsNonRoot") is True, "container runAsNonRoot must be true")
    f.check(sc.get("runAsUser") == 65532, "container runAsUser must be 65532")
    f.check(sc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem must be true")
    f.check(sc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation must be false")
    f.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), "container must drop ALL capabilities")
    f.check(not (sc.get("capabilities") or {}).get("add"), "container must add no capability")
    f.check(sc.get("privileged") in (None, False), "container must not be privileged")
    f.check((sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "container seccompProfile must be RuntimeDefault")

    f.check(re.fullmatch(r"ghcr\.io/reconnect-dev/reconnect-operator(:[\w.-]+|@sha256:[0-9a-f]{64})", c["image"]) is not None,
            f"unexpected image {c['image']}")
    args = c.get("args") or []
    f.check(args[:1] == ["run"], f"first arg must be run: {args}")
    for required in ("--metrics-addr=0.0.0.0:8080", "--leader-election", "--lease-namespace=$(POD_NAMESPACE)"):
        f.check(required in args, f"missing arg {required}")
    f.check(any(re.fullmatch(r"--log-format=(json|text)", a) for a in args), f"missing --log-format: {args}")
    watch = [a for a in args if a.startswith("--watch-namespaces")]
    if expect["watch_namespaces"]:
        f.check(watch == ["--watch-namespaces=" + ",".join(expect["watch_namespaces"])], f"watch arg {watch}")
    else:
        f.check(not watch, f"--watch-namespaces rendered without watchNamespaces: {watch}")

    env = {e["name"]: e for e in c.get("env") or []}
    f.check(bool(env.get("RUST_LOG", {}).get("value")), "RUST_LOG must be set")
    for name, path in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
        field = ((env.get(name) or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        f.check(field == path, f"{name} must come from the downward API ({path})")
    # $(POD_NAMESPACE) in args expands only if the variable is defined before use in env.
    f.check("POD_NAMESPACE" in env, "args use $(POD_NAMESPACE) but env does not define it")

    ports = c.get("ports") or []
    f.check(ports == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], f"container ports {ports}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        f.check(get.get("path") == path and get.get("port") == "http", f"{probe} must GET {path} on port http")
    res = c.get("resources") or {}
    f.check(bool(res.get("requests", {}).get("cpu")) and bool(res.get("requests", {}).get("memory")), "cpu/memory requests missing")
    f.check(bool(res.get("limits", {}).get("memory")), "memory limit missing")

    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    f.check(all(labels.get(k) == v for k, v in selector.items()), "pod template labels do not match the selector")
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue
        doc_labels = doc["metadata"].get("labels") or {}
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            f.check(key in doc_labels, f"{ref(doc)} lacks label {key}")

    services = [d for d in docs if d["kind"] == "Service"]
    if f.check(len(services) == 1, "expected one Service"):
        svc = services[0]
        f.check(svc["spec"]["selector"] == selector, "Service selector differs from the Deployment's")
        f.check(svc["spec"]["ports"][0]["targetPort"] == "http", "Service must target port http")


def check_optional(docs, expect, f):
    kinds = [d["kind"] for d in docs]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    f.check(len(pdbs) == (1 if expect["pdb"] else 0), f"PodDisruptionBudgets: {len(pdbs)}, want {int(expect['pdb'])}")
    for pdb in pdbs:
        f.check(pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"], "PDB must use maxUnavailable 1")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        f.check(kinds.count(kind) == (1 if expect["monitoring"] else 0), f"{kind} count {kinds.count(kind)}")
    f.check(kinds.count("NetworkPolicy") == (1 if expect["network_policy"] else 0), "NetworkPolicy count")
    for np in (d for d in docs if d["kind"] == "NetworkPolicy"):
        spec = np["spec"]
        f.check(set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}, "NetworkPolicy must cover Ingress and Egress")
        ingress_ports = [p for rule in spec.get("ingress") or [] for p in rule.get("ports") or []]
        f.check(ingress_ports and all(p.get("port") in ("http", 8080) for p in ingress_ports),
                f"NetworkPolicy ingress must be limited to port 8080: {ingress_ports}")
        f.check(all(rule.get("ports") for rule in spec.get("ingress") or []), "an ingress rule opens every port")
        for rule in spec.get("egress") or []:
            f.check(bool(rule.get("ports")), f"an egress rule opens every port: {rule}")
            f.check("to" not in rule or rule["to"], f"an egress rule has an empty 'to' (anywhere): {rule}")
        egress_ports = {p.get("port") for rule in spec.get("egress") or [] for p in rule.get("ports") or []}
        f.check({53, 443} <= egress_ports, f"egress must allow DNS (53) and HTTPS (443): {egress_ports}")

    for rule_doc in (d for d in docs if d["kind"] == "PrometheusRule"):
        rules = [r for g in rule_doc["spec"]["groups"] for r in g["rules"]]
        alerts = {r.get("alert") for r in rules}
        f.check(ALERTS <= alerts, f"missing alerts: {sorted(ALERTS - alerts)}")
        for r in rules:
            expr = str(r["expr"])
            try:
                promql_parser.parse(expr)
            except ValueError as err:
                f.append(f"{r.get('alert') or r.get('record')}: PromQL does not parse: {err}")
            for name in set(re.findall(r"\breconnect_[a-z0-9_]+", expr)):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                f.check(name in METRICS or (base in HISTOGRAMS and name != base),
                        f"{r.get('alert') or r.get('record')}: unknown metric {name}")
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        svc = next(d for d in docs if d["kind"] == "Service")
        svc_labels = svc["metadata"]["labels"]
        f.check(all(svc_labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
                "ServiceMonitor selector does not select the metrics Service")
        f.check(sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]],
                "ServiceMonitor endpoint port is not a Service port name")


def main():
    rendered, native_out, expect_file = sys.argv[1:4]
    expect = json.loads(pathlib.Path(expect_file).read_text())
    docs = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if d]
    f = Findings()

    native, foreign = [], []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        (foreign if key in FOREIGN_KINDS else native).append(doc)
    for doc in foreign:
        schema = json.loads((SCHEMAS / FOREIGN_KINDS[(doc["apiVersion"], doc["kind"])]).read_text())
        for err in jsonschema.Draft7Validator(schema).iter_errors(doc):
            path = "/".join(str(p) for p in err.absolute_path)
            f.append(f"{ref(doc)}: {path}: {err.message}")
    if foreign:
        print(f"  note: {', '.join(sorted({d['kind'] for d in foreign}))} are Prometheus Operator CRDs unknown to "
              "kubernetes-validate; checked against .ci/schemas/ (our fields only) and PromQL-parsed instead")

    check_rbac(docs, expect, f)
    check_deployment(docs, expect, f)
    check_optional(docs, expect, f)

    pathlib.Path(native_out).write_text(yaml.safe_dump_all(native, sort_keys=False))
    for finding in f:
        print(f"  FAIL {finding}")
    print(f"  policy: {len(docs)} objects ({len(foreign)} Prometheus Operator), {len(f)} finding(s)")
    sys.exit(1 if f else 0)


if __name__ == "__main__":
    main()
