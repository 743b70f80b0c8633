"""Lints and renders helm/paygate and validates every manifest (see scripts/check-chart)."""

import copy
import ipaddress
import json
import math
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path("helm/paygate")
KUBE_VERSION = "1.30.0"
# Custom resources: the Kubernetes schemas do not know them; their shape is checked here instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector.matchLabels", "spec.endpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
}
# The alerts and the dashboard are files of the chart, rendered as they are (scripts/check-alerts tests them).
ALERTS = CHART / "files/paygate-alerts.yaml"
DASHBOARD = CHART / "files/paygate-dashboard.json"
# What paygate needs after its drain (config.shutdownGraceMs) to close the pool and flush its logs.
STOP_MARGIN_SECONDS = 5
# Kinds that must be ordinary release resources: Helm never deletes hook resources on `helm uninstall`,
# so a hook Secret (the database URL, the master key) or ConfigMap would be left behind.
NO_HOOK_KINDS = {"Secret", "ConfigMap", "ServiceAccount"}
# The broadest trusted-proxy block a value set may name: anything wider likely holds other pods,
# and every address in it may forge X-Forwarded-For (a pingback's source).
NARROWEST_BROAD_PREFIX = {4: 24, 6: 64}


def lookup(doc, dotted):
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def check(name, values):
    problems = []
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    for message in report.get("messages", []):
        if message.get("severity", 0) >= 2:
            problems.append(f"lint: {message.get('path')}: {message.get('error')}")
    problems += [f"lint: {e}" for e in report.get("errors", [])]
    chart = helm.Chart.load(str(CHART))
    try:
        manifests = chart.render(values, name="paygate", namespace="payments", is_install=True)
    except helm.HelmError as e:
        return problems + [f"render: {e}"]
    kinds = []
    docs = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            kind = (doc.get("apiVersion"), doc.get("kind"))
            kinds.append(kind[1])
            docs.append((path, doc))
            problems += rule_problems(path, doc, values)
            if kind in CUSTOM_KINDS:
                problems += [f"{path}: {kind[1]} lacks {f}" for f in CUSTOM_KINDS[kind] if lookup(doc, f) is None]
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{path}: {kind[1]}: {e.message} at {'.'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{path}: no schema for {kind}: {e}")
    problems += release_problems(docs)
    print(f"{name}: {len(kinds)} manifests ({', '.join(sorted(set(kinds)))}): {len(problems)} problems")
    return problems


def release_problems(docs):
    """The chart's rules across manifests: a rolling update and a pod's stop fail no request."""
    problems = []
    config = next((d.get("data") or {} for _, d in docs if d.get("kind") == "ConfigMap"
                   and "PAYGATE_SHUTDOWN_GRACE_MS" in (d.get("data") or {})), {})
    for path, doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        if (strategy.get("type"), rolling.get("maxUnavailable"), rolling.get("maxSurge")) != ("RollingUpdate", 0, 1):
            problems.append(f"{path}: the rollout must be RollingUpdate with maxUnavailable 0 and maxSurge 1, not {strategy}")
        pod = spec["template"]["spec"]
        server = next(c for c in pod["containers"] if c["name"] == "paygate")
        sleep = lookup(server, "lifecycle.preStop.sleep.seconds")
        if not isinstance(sleep, int) or sleep < 1:
            problems.append(f"{path}: no preStop sleep: endpoints would still send requests to a pod that no longer takes them")
            sleep = 0
        grace_ms = config.get("PAYGATE_SHUTDOWN_GRACE_MS")
        if grace_ms is None:
            problems.append(f"{path}: no PAYGATE_SHUTDOWN_GRACE_MS in the ConfigMap")
            continue
        needed = sleep + math.ceil(int(grace_ms) / 1000) + STOP_MARGIN_SECONDS
        if pod.get("terminationGracePeriodSeconds", 30) < needed:
            problems.append(f"{path}: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} < preStop "
                            f"{sleep} s + PAYGATE_SHUTDOWN_GRACE_MS {grace_ms} + {STOP_MARGIN_SECONDS} s")
    return problems


def rule_problems(path, doc, values):
    """The chart's own rules, on one rendered manifest."""
    problems = []
    kind = doc.get("kind")
    metadata = doc.get("metadata") or {}
    if kind == "PrometheusRule" and doc.get("spec") != yaml.safe_load(ALERTS.read_text()):
        problems.append(f"{path}: the PrometheusRule's spec is not {ALERTS} as it is")
    if kind == "ConfigMap" and "paygate.json" in (doc.get("data") or {}):
        dashboard = values.get("grafanaDashboard") or {}
        label = dashboard.get("sidecarLabel", "grafana_dashboard")
        if (metadata.get("labels") or {}).get(label) != dashboard.get("sidecarLabelValue", "1"):
            problems.append(f"{path}: the dashboard's ConfigMap lacks the Grafana sidecar's label {label}")
        try:
            if json.loads(doc["data"]["paygate.json"]) != json.loads(DASHBOARD.read_text()):
                problems.append(f"{path}: the dashboard is not {DASHBOARD} as it is")
        except json.JSONDecodeError as e:
            problems.append(f"{path}: the dashboard is not JSON: {e}")
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if kind in NO_HOOK_KINDS and "helm.sh/hook" in annotations:
        problems.append(f"{path}: {kind} is a Helm hook ({annotations['helm.sh/hook']}); helm uninstall would leave it behind")
    if kind == "ConfigMap":
        proxies = (doc.get("data") or {}).get("PAYGATE_TRUSTED_PROXIES", "")
        for block in filter(None, (b.strip() for b in proxies.split(","))):
            try:
                net = ipaddress.ip_network(block, strict=False)
            except ValueError:
                problems.append(f"{path}: PAYGATE_TRUSTED_PROXIES: {block!r} is not a CIDR block")
                continue
            if net.prefixlen < NARROWEST_BROAD_PREFIX[net.version]:
                problems.append(f"{path}: PAYGATE_TRUSTED_PROXIES trusts the broad range {block}: name the ingress's addresses only")
    return problems


def without(values, dotted):
    """A deep copy of `values` with the key at `dotted` removed."""
    values = copy.deepcopy(values)
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node.get(part, {})
    node.pop(last, None)
    return values


def having(values, dotted, value):
    """A deep copy of `values` with the key at `dotted` set to `value`."""
    values = copy.deepcopy(values)
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return values


def refuses(values, key, case=None):
    """The chart must refuse to render `values`, naming `key` in its message."""
    case = case or f"without {key}"
    try:
        helm.Chart.load(str(CHART)).render(values, name="paygate", namespace="payments", is_install=True)
    except helm.HelmError as e:
        return [] if key in str(e) else [f"{case}: refused, but the message does not name {key}: {e}"]
    return [f"{case}: rendered, but the chart must refuse it (naming {key})"]


def main():
    sets = sorted(Path("helm/ci").glob("*.yaml"))
    problems = []
    for path in sets:
        values = yaml.safe_load(path.read_text()) or {}
        problems += [f"{path.name}: {p}" for p in check(path.name, values)]
    # No default trusts anyone's X-Forwarded-For: the operator names the ingress's range.
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if defaults["config"]["trustedProxies"]:
        problems.append(f"values.yaml: config.trustedProxies defaults to {defaults['config']['trustedProxies']!r}; it must be empty")
    # The chart must also refuse what it cannot deploy: no image (none is published), no database URL
    # and no existing Secret, an ingress without the proxies it connects from.
    minimal = yaml.safe_load(Path("helm/ci/default.yaml").read_text())
    ingress = yaml.safe_load(Path("helm/ci/external-secret.yaml").read_text())
    problems += refuses(without(minimal, "image.repository"), "image.repository")
    problems += refuses(without(minimal, "secrets.databaseUrl"), "secrets.databaseUrl")
    problems += refuses(without(ingress, "config.trustedProxies"), "config.trustedProxies")
    # A pod killed before its preStop sleep and drain are over fails the requests it still holds.
    problems += refuses(having(minimal, "terminationGracePeriodSeconds", 30), "terminationGracePeriodSeconds",
                        "terminationGracePeriodSeconds 30 with the default preStop sleep and drain")
    problems += refuses(having(having(minimal, "config.shutdownGraceMs", 60000), "terminationGracePeriodSeconds", 70),
                        "terminationGracePeriodSeconds", "terminationGracePeriodSeconds 70 with config.shutdownGraceMs 60000")
    # The drain the timing above is checked against is config.shutdownGraceMs: no other way in.
    problems += refuses(having(minimal, "config.extraEnv", {"PAYGATE_SHUTDOWN_GRACE_MS": "60000"}),
                        "PAYGATE_SHUTDOWN_GRACE_MS", "config.extraEnv with PAYGATE_SHUTDOWN_GRACE_MS")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"chart: {len(sets)} value sets, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
