//! The Grafana dashboard (deploy/grafana/parley.json) and the alerting rules
//! (deploy/prometheus/parley-rules.yaml) only query metrics the suite
//! exposes, every expression parses as PromQL, and the PrometheusRule of the
//! monitoring component carries exactly the rules of the rules file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};

use crate::helpers::{http_get, spawn_app};

/// Metrics referenced that a short workload does not make appear: a family
/// with labels is only exported once one of its series has been recorded.
const ONLY_AFTER_AN_EVENT: &[(&str, &str)] = &[
    (
        "parley_ai_provider_errors_total",
        "labelled by provider and kind: exported after the first failed provider call",
    ),
    (
        "parley_ai_breaker_open",
        "labelled by provider: exported once a provider's breaker changed state",
    ),
    (
        "parley_edge_upgrades_refused_total",
        "labelled by reason: exported after the first refused upgrade",
    ),
    (
        "parley_edge_rate_limited_total",
        "labelled by tier: exported after the first rate-limited command",
    ),
];

fn deploy_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Grafana's variables replaced by what they stand for, so the text parses.
fn substitute_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$namespace", ".*")
}

/// Collects the metric names of every selector in an expression.
struct Names<'a>(&'a mut BTreeSet<String>);

impl ExprVisitor for Names<'_> {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = selector
            .name
            .clone()
            .or_else(|| {
                selector
                    .matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
            })
            .ok_or_else(|| format!("selector without a metric name: {expr}"))?;
        self.0.insert(name);
        Ok(true)
    }
}

/// Parses `expr` (reporting `origin` on failure) and adds its metric names.
fn collect(origin: &str, expr: &str, names: &mut BTreeSet<String>) {
    let parsed = parser::parse(&substitute_grafana_variables(expr))
        .unwrap_or_else(|e| panic!("{origin}: {expr:?} does not parse: {e}"));
    walk_expr(&mut Names(names), &parsed).unwrap_or_else(|e| panic!("{origin}: {e}"));
}

/// The dashboard's expressions as (panel title, expr), every panel but rows
/// having at least one.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&deploy_file("deploy/grafana/parley.json"))
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            exprs.push((title.clone(), expr.to_owned()));
        }
    }
    // Template variables: `label_values(metric, label)` is Grafana's, not
    // PromQL; its metric is checked like any other.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split_once(','))
                .map(|(metric, _)| metric.trim())
                .unwrap_or_else(|| panic!("unexpected variable query {query:?}"));
            exprs.push((format!("variable {}", variable["name"]), inner.to_owned()));
        }
    }
    exprs
}

/// The alerting rules' groups, from a file of the Prometheus rule format.
fn rule_groups() -> Value {
    let rules: Value = serde_norway::from_str(&deploy_file("deploy/prometheus/parley-rules.yaml"))
        .expect("the rules file is YAML");
    rules["groups"].clone()
}

/// The rules' expressions as (alert name, expr); every alert is documented.
fn rule_exprs() -> Vec<(String, String)> {
    let operations = deploy_file("docs/operations.md");
    let mut exprs = Vec::new();
    for group in rule_groups().as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_owned();
            for key in ["summary", "description", "hint", "runbook_url"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{alert}: annotation {key} missing"
                );
            }
            assert!(
                rule["labels"]["severity"].is_string(),
                "{alert}: no severity"
            );
            assert!(
                operations.contains(&format!("### {alert}")),
                "{alert} has no section in docs/operations.md"
            );
            exprs.push((alert, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    exprs
}

/// The families a scrape exposes, by name (without `_total`), with their type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Whether the query name `name` is a series of an exposed family: counters
/// are queried as `<family>_total`, histograms as `_bucket`/`_sum`/`_count`.
fn exposed(name: &str, families: &BTreeMap<String, String>) -> bool {
    let is = |family: &str, kinds: &[&str]| {
        families
            .get(family)
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    };
    if is(name, &["gauge", "unknown", "untyped"]) {
        return true;
    }
    // The classic text format names counter families with their `_total`.
    if is(name, &["counter"]) && name.ends_with("_total") {
        return true;
    }
    if name
        .strip_suffix("_total")
        .is_some_and(|family| is(family, &["counter"]))
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|family| is(family, &["histogram"]))
    })
}

#[test]
fn the_prometheus_rule_carries_the_rules_file() {
    let wrapped: Value = serde_norway::from_str(&deploy_file(
        "deploy/k8s/components/monitoring/prometheusrule.yaml",
    ))
    .expect("the PrometheusRule is YAML");
    assert_eq!(wrapped["kind"], "PrometheusRule");
    assert_eq!(
        wrapped["spec"]["groups"],
        rule_groups(),
        "prometheusrule.yaml's spec.groups must equal deploy/prometheus/parley-rules.yaml's groups"
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_query_is_exposed() {
    let mut names = BTreeSet::new();
    for (origin, expr) in dashboard_exprs().into_iter().chain(rule_exprs()) {
        collect(&origin, &expr, &mut names);
    }
    assert!(names.len() > 40, "{names:?}");

    // A small workload, so the labelled families that depend on traffic are
    // exported: a token sign-in (auth verifications), an anonymous one,
    // joins and messages (commands, gRPC calls, chat appends), a readiness
    // probe (service_up) and a closed connection (disconnects).
    let app = spawn_app().await;
    let mut alice = app.user("alice-sub", "alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("dashboards").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    for i in 0..3 {
        alice
            .ok(
                "message.send",
                json!({"room": room, "text": format!("m{i}"), "client_msg_id": format!("m{i}")}),
            )
            .await;
        bob.event("message.new").await;
    }
    let (status, body) = http_get(app.addrs.edge, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    bob.close_normally().await;
    let scrape = app
        .scrape_until(|text| text.contains("parley_edge_disconnects_total{"))
        .await;
    let families = families(&scrape);

    let allowed: BTreeSet<&str> = ONLY_AFTER_AN_EVENT.iter().map(|(name, _)| *name).collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !allowed.contains(name.as_str()) && !exposed(name, &families))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exposed: {missing:?}\nexposed families: {families:?}"
    );
    // The allowlist holds only queried names of families that are defined
    // (registered under the name without `_total`), so a typo is not excused.
    let defined = deploy_file("common/src/metrics/families.rs");
    for name in &allowed {
        assert!(
            names.contains(*name),
            "{name} is allowlisted but never queried"
        );
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            defined.contains(&format!("\"{family}\"")),
            "{family} is not a family of common/src/metrics/families.rs"
        );
    }
}
