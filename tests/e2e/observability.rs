//! What an operator watches is what paygate exports: every metric the Helm chart's alerts
//! (`helm/paygate/files/paygate-alerts.yaml`) and dashboard (`files/paygate-dashboard.json`) name is
//! in a running paygate's `/metrics`. The counters and histograms are there from the first scrape, at
//! zero (`src/metrics_catalog.rs`); the gauges once their checks ran, within seconds; the series with
//! open-ended labels (gRPC method and code, pingback type and outcome) after a checkout and its pingback.

use std::{collections::BTreeSet, path::Path, time::Duration};

use paygate::{
    metrics_catalog::{AtStart, Kind, METRICS},
    proto::v1 as pb,
};

use crate::support::*;

const ALERTS: &str = "helm/paygate/files/paygate-alerts.yaml";
const DASHBOARD: &str = "helm/paygate/files/paygate-dashboard.json";

fn chart_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `expr` of every rule in a Prometheus rule file: `expr: <one line>` or `expr: |` and the lines
/// indented deeper.
fn rule_exprs(text: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let indent = line.len() - line.trim_start().len();
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while let Some(next) = lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent) {
                block.push(next.trim());
            }
            exprs.push(block.join(" "));
        } else {
            exprs.push(rest.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// The PromQL of every panel target and query variable of a Grafana dashboard.
fn dashboard_exprs(text: &str) -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).expect("a query");
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// The metric names a PromQL expression reads (or Grafana's `label_values(<expr>, <label>)`): every
/// identifier that is not a function or aggregation (followed by `(`), a keyword, a label name (in
/// `{...}`, or the list after `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`), a
/// string, a number, a duration (`[5m]`, `offset 5m`) or a Grafana variable (`$job`).
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Aggregations may put their `by (...)` before their `(`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let expr = match expr.trim().strip_prefix("label_values(").and_then(|e| e.strip_suffix(')')) {
        Some(inner) => inner.rsplit_once(',').map_or(inner, |(metric, _label)| metric),
        None => expr,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    // Skips from `open` to its `close`, over quoted strings.
    let skip = |mut i: usize, close: char| {
        let mut quote = None;
        while i < chars.len() {
            match (quote, chars[i]) {
                (Some(_), '\\') => i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, c @ ('"' | '\'' | '`')) => quote = Some(c),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip(i + 1, '}'),
            '[' => i = skip(i + 1, ']'),
            '(' if label_list_next => {
                i = skip(i + 1, ')');
                label_list_next = false;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                // Numbers (0.99, 1e3) and durations (5m, 1h30m).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if LABEL_LISTS.contains(&word.as_str()) {
                    label_list_next = true;
                } else if next != Some(&'(')
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index just past the string literal starting at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Every metric the chart's alerts and dashboard read.
fn watched_metrics() -> BTreeSet<String> {
    let alerts = chart_file(ALERTS);
    let rules = rule_exprs(&alerts);
    assert_eq!(rules.len(), alerts.matches("- alert:").count(), "one expr per alert in {ALERTS}: {rules:#?}");
    let panels = dashboard_exprs(&chart_file(DASHBOARD));
    assert!(panels.len() >= 20, "{DASHBOARD}: only {} queries found", panels.len());
    let mut watched = BTreeSet::new();
    for expr in rules.iter().chain(&panels) {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "no metric found in {expr:?}");
        watched.extend(names);
    }
    watched
}

/// The names of the sample lines of Prometheus text.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

async fn scrape(gate: &Paygate) -> String {
    http_client().get(gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

#[test]
fn promql_metrics_names_the_metrics_and_nothing_else() {
    let names = |e: &str| promql_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (namespace, job) (rate(paygate_a_total{outcome=~"error|x", job="$job"}[5m]))
               / sum without (state) (paygate_b{state="in_use"}) > 0.05 and on (pod) up offset 1h
               or max(topk by (x) (3, paygate_c))"#
        ),
        ["paygate_a_total", "paygate_b", "paygate_c", "up"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[$__rate_interval]))) > 2e0"),
        ["x_seconds_bucket"]
    );
    assert_eq!(names(r#"label_values(paygate_ready{namespace="$namespace"}, job)"#), ["paygate_ready"]);
    assert_eq!(names("sum(increase(m_total[24h])) or vector(0)"), ["m_total"]);
}

#[test]
fn the_alerts_and_the_dashboard_name_enough_metrics_to_be_parsed_right() {
    let watched = watched_metrics();
    // The ten alerts read nine metrics of their own; the dashboard adds more.
    assert!(watched.len() >= 15, "{watched:?}");
    assert!(watched.iter().all(|n| n.starts_with("paygate_")), "{watched:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let watched = watched_metrics();
    let db = TestDb::new(Backend::Postgres).await;
    let redis = RedisServer::start();
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_REDIS_URL", &redis.url()), ("PAYGATE_DATABASE_MAX_CONNECTIONS", "7")]);

    // Before any request: every counter and histogram the catalog shows from the start (at zero, but
    // for what starting up did: e.g. the channel cache's resync with Redis).
    let first = scrape(&gate).await;
    for m in METRICS.iter().filter(|m| !matches!(m.at_start, AtStart::Nothing)) {
        let name = match m.kind {
            Kind::Histogram => format!("{}_count", m.name),
            _ => m.name.to_owned(),
        };
        let lines: Vec<&str> = first.lines().filter(|l| l.split(['{', ' ']).next() == Some(name.as_str())).collect();
        assert!(!lines.is_empty(), "{name} is not in the first scrape:\n{first}");
    }

    // A checkout and its pingback: the gRPC and pingback series.
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    checkout_and_pay(&gate, &mut payments, "order-1").await;

    let mut missing = watched.clone();
    for _ in 0..100 {
        missing = watched.difference(&exported(&scrape(&gate).await)).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "the alerts or the dashboard read metrics paygate does not export: {missing:?}");
    assert_eq!(metric(&gate, "paygate_db_pool_max_connections").await, 7.0, "the pool's limit is the setting");
    eprintln!("{} metrics named by the alerts and the dashboard, all exported: {watched:?}", watched.len());
}
