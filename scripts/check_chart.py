"""Lints and renders helm/paygate and validates every manifest (see scripts/check-chart)."""

import copy
import ipaddress
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path("helm/paygate")
KUBE_VERSION = "1.30.0"
# Custom resources: the Kubernetes schemas do not know them; their shape is checked here instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector.matchLabels", "spec.endpoints"]}
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
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            kind = (doc.get("apiVersion"), doc.get("kind"))
            kinds.append(kind[1])
            problems += rule_problems(path, doc)
            if kind in CUSTOM_KINDS:
                problems += [f"{path}: {kind[1]} lacks {f}" for f in CUSTOM_KINDS[kind] if lookup(doc, f) is None]
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{path}: {kind[1]}: {e.message} at {'.'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{path}: no schema for {kind}: {e}")
    print(f"{name}: {len(kinds)} manifests ({', '.join(sorted(set(kinds)))}): {len(problems)} problems")
    return problems


def rule_problems(path, doc):
    """The chart's own rules, on one rendered manifest."""
    problems = []
    kind = doc.get("kind")
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


def refuses(values, key):
    """The chart must refuse to render `values`, naming `key` in its message."""
    try:
        helm.Chart.load(str(CHART)).render(values, name="paygate", namespace="payments", is_install=True)
    except helm.HelmError as e:
        return [] if key in str(e) else [f"without {key}: refused, but the message does not name it: {e}"]
    return [f"without {key}: rendered, but the chart must require {key}"]


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
    for p in problems:
        print(p, file=sys.stderr)
    print(f"chart: {len(sets)} value sets, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
