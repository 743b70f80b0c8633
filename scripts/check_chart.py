"""Lints and renders helm/paygate and validates every manifest (see scripts/check-chart)."""

import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path("helm/paygate")
KUBE_VERSION = "1.30.0"
# Custom resources: the Kubernetes schemas do not know them; their shape is checked here instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector.matchLabels", "spec.endpoints"]}


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


def main():
    sets = sorted(Path("helm/ci").glob("*.yaml"))
    problems = []
    for path in sets:
        values = yaml.safe_load(path.read_text()) or {}
        problems += [f"{path.name}: {p}" for p in check(path.name, values)]
    # The chart must also refuse what it cannot deploy: no database URL and no existing Secret.
    try:
        helm.Chart.load(str(CHART)).render({}, name="paygate", namespace="payments", is_install=True)
        problems.append("defaults without secrets rendered, but the chart must require secrets.databaseUrl")
    except helm.HelmError:
        pass
    for p in problems:
        print(p, file=sys.stderr)
    print(f"chart: {len(sets)} value sets, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
