"""paygate's alerts and dashboard, checked with promtool and against the README (see scripts/check-alerts).

    python scripts/check_alerts.py PROMTOOL
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import yaml

CHART = Path("helm/paygate")
RULES = CHART / "files/paygate-alerts.yaml"
DASHBOARD = CHART / "files/paygate-dashboard.json"
TESTS = sorted((CHART / "tests").glob("*.test.yaml"))
README = Path("README.md")
OUT = Path("target/check-alerts")
SEVERITIES = {"critical", "warning"}
# Grafana's variables, as promtool reads the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": "payments", "$job": "paygate-http"}


def rendered_rules():
    """The spec of the PrometheusRule the chart renders with prometheusRule.enabled."""
    values = yaml.safe_load(Path("helm/ci/default.yaml").read_text())
    values["prometheusRule"] = {"enabled": True}
    manifests = helm.Chart.load(str(CHART)).render(values, name="paygate", namespace="payments", is_install=True)
    specs = [doc["spec"] for path, text in manifests.items() if path.endswith(".yaml")
             for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "PrometheusRule"]
    return specs[0] if len(specs) == 1 else None


def promtool(tool, *args):
    run = subprocess.run([tool, *args], capture_output=True, text=True)
    output = (run.stdout + run.stderr).strip()
    return run.returncode == 0, output


def readme_runbooks():
    """Alert name -> the last cell of its row in the README's Alerts table."""
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.match(r"`(Paygate\w+)`", cells[0]) if line.startswith("|") and len(cells) >= 3 else None
        if name:
            rows[name.group(1)] = cells[-1]
    return rows


def alert_problems(rules, tests):
    problems = []
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    names = [a["alert"] for a in alerts]
    problems += [f"alert {n} is defined twice" for n in sorted({n for n in names if names.count(n) > 1})]
    readme = readme_runbooks()
    for alert in alerts:
        name = alert["alert"]
        severity = (alert.get("labels") or {}).get("severity")
        annotations = alert.get("annotations") or {}
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity {severity!r} is not one of {sorted(SEVERITIES)}")
        for key in ("summary", "runbook"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        runbook = annotations.get("runbook", "")
        if "|" in runbook:
            problems.append(f"{name}: the runbook has a '|', which would split its README table row")
        if name not in readme:
            problems.append(f"{name}: no row in {README}'s Alerts table")
        elif readme[name] != runbook:
            problems.append(f"{name}: the README's row ends with {readme[name]!r}, not the runbook annotation {runbook!r}")
        # Tested both ways: some series fire it, some do not.
        cases = [case for test in tests for case in test.get("alert_rule_test", []) if case.get("alertname") == name]
        if not any(case.get("exp_alerts") for case in cases):
            problems.append(f"{name}: no test where it fires")
        if not any(not case.get("exp_alerts") for case in cases):
            problems.append(f"{name}: no test where it does not fire")
    problems += [f"the README's Alerts table names {n}, which is no alert" for n in sorted(set(readme) - set(names))]
    return problems, names


def dashboard_queries(dashboard):
    """(where, PromQL) of every panel target and query variable, Grafana's variables filled in."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} ({panel['title']}) {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            queries.append((f"variable {variable['name']}", match.group(1) if match else query))
    for i, (where, expr) in enumerate(queries):
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        queries[i] = (where, expr)
    return queries


def dashboard_problems(dashboard):
    problems = []
    if not dashboard.get("uid"):
        problems.append("dashboard: no uid (Grafana would make a new dashboard on every load)")
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        if not panel.get("targets"):
            problems.append(f"dashboard panel {panel['id']} ({panel['title']}) has no query")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"dashboard panel {panel['id']} ({panel['title']}) does not use the $datasource variable")
    return problems


def main():
    tool = sys.argv[1]
    OUT.mkdir(parents=True, exist_ok=True)
    problems = []
    source = yaml.safe_load(RULES.read_text())
    spec = rendered_rules()
    if spec is None:
        problems.append("the chart renders no (or more than one) PrometheusRule with prometheusRule.enabled")
        spec = source
    elif spec != source:
        problems.append(f"the rendered PrometheusRule's spec differs from {RULES}")
    rendered = OUT / "paygate-alerts.rendered.yaml"
    rendered.write_text(yaml.safe_dump(spec, sort_keys=False))

    ok, output = promtool(tool, "check", "rules", str(rendered))
    print(output)
    if not ok:
        problems.append("promtool check rules failed (above)")

    tests = [yaml.safe_load(path.read_text()) for path in TESTS]
    for path in TESTS:
        ok, output = promtool(tool, "test", "rules", str(path))
        print(f"{path}: {output}")
        if not ok:
            problems.append(f"promtool test rules {path} failed (above)")
    found, names = alert_problems(spec, [case for test in tests for case in test.get("tests", [])])
    problems += found

    dashboard = json.loads(DASHBOARD.read_text())
    problems += dashboard_problems(dashboard)
    queries = dashboard_queries(dashboard)
    # promtool parses every query, as recording rules.
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    dashboard_rules = OUT / "paygate-dashboard.queries.yaml"
    dashboard_rules.write_text(yaml.safe_dump(as_rules, sort_keys=False))
    ok, output = promtool(tool, "check", "rules", str(dashboard_rules))
    if not ok:
        print(output)
        for i, (where, expr) in enumerate(queries):
            if f"dashboard:query_{i}" in output or f"{i}:" in output:
                print(f"  query {i}: {where}: {expr}", file=sys.stderr)
        problems.append("a dashboard query does not parse (promtool check rules, above)")

    for p in problems:
        print(p, file=sys.stderr)
    cases = sum(len(test.get("tests", [])) for test in tests)
    evaluations = sum(len(case.get("alert_rule_test", [])) for test in tests for case in test.get("tests", []))
    print(f"alerts: {len(names)} alerts, {cases} promtool test cases ({evaluations} evaluations), "
          f"{len(queries)} dashboard queries: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
