//! The fleet assets under `deploy/`: the Prometheus rules
//! (`deploy/prometheus/poolwatch.rules.yml`), their promtool unit tests
//! (`poolwatch.rules.test.yml`) and the Grafana dashboard
//! (`deploy/grafana/poolwatch.json`).
//!
//! ```sh
//! cargo test --all-features --test fleet_assets
//! ```
//!
//! Needs `promtool` (Debian's `prometheus` package; `PROMTOOL=/path`
//! overrides the search): without it the promtool tests fail, they do not
//! skip.
//!
//! [`metric_names_used`] lists the raw metric names the rules and the
//! dashboard read (recording rules resolved to what they are built from),
//! so a check against a live `/metrics` can assert each is exported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const RULES: &str = "deploy/prometheus/poolwatch.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/poolwatch.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/poolwatch.json";

/// `path` relative to the crate root.
fn asset(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(asset(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------
// promtool

/// promtool: `$PROMTOOL`, else on `PATH`, else `/usr/bin/promtool`.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (PROMTOOL unset, not on PATH, no /usr/bin/promtool): \
                 install Debian's `prometheus` package (promtool)"
            )
        })
}

/// Runs `promtool args…` in the crate root; panics with its output unless
/// it succeeds. Returns stdout.
fn run_promtool(args: &[&str]) -> String {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: install Debian's `prometheus` package (promtool)",
                tool.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

#[test]
fn promtool_check_rules() {
    let out = run_promtool(&["check", "rules", RULES]);
    // "  SUCCESS: 28 rules found": also a check on this file's reader.
    let found: usize = out
        .split("SUCCESS: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected promtool output:\n{out}"));
    assert_eq!(
        found,
        rules().len(),
        "promtool and this test's YAML reader disagree"
    );
}

#[test]
fn promtool_test_rules() {
    run_promtool(&["test", "rules", RULE_TESTS]);
}

/// Every dashboard query parses as PromQL: promtool checks them as
/// recording rules, Grafana's interval variables replaced by durations
/// (the `$job`-style variables are inside label-matcher strings).
#[test]
fn dashboard_queries_are_promql() {
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (what, expr)) in dashboard_exprs().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        let expr = match expr.strip_prefix("label_values(") {
            // `label_values(selector, label)`: the selector is PromQL.
            Some(args) => {
                top_level_args(args.strip_suffix(')').expect("label_values(…)"))[0].to_owned()
            }
            None => expr,
        };
        let quoted = serde_json::to_string(&expr).unwrap();
        file.push_str(&format!(
            "      # {what}\n      - record: dashboard:query_{n}:check\n        expr: {quoted}\n"
        ));
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("poolwatch-dashboard-queries.rules.yml");
    std::fs::write(&path, file).unwrap();
    run_promtool(&["check", "rules", path.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------
// The rules

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Record,
    Alert,
}

/// One rule of the rules file.
#[derive(Debug, Clone)]
struct Rule {
    kind: Kind,
    /// The recorded metric or the alert name.
    name: String,
    expr: String,
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn scalar_map(node: Option<&Yaml>) -> BTreeMap<String, String> {
    match node {
        None => BTreeMap::new(),
        Some(Yaml::Map(entries)) => entries
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
            .collect(),
        Some(other) => panic!("expected a map of strings, got {other:?}"),
    }
}

/// The rules of the rules file, in order.
fn rules() -> Vec<Rule> {
    let doc = parse_yaml(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut out = Vec::new();
    for group in doc.get("groups").expect("groups").as_seq() {
        for rule in group.get("rules").expect("rules").as_seq() {
            let (kind, name) = match (rule.get("record"), rule.get("alert")) {
                (Some(name), None) => (Kind::Record, name.as_str().to_owned()),
                (None, Some(name)) => (Kind::Alert, name.as_str().to_owned()),
                _ => panic!("a rule needs exactly one of record and alert: {rule:?}"),
            };
            out.push(Rule {
                kind,
                name,
                expr: rule.get("expr").expect("expr").as_str().to_owned(),
                for_: rule.get("for").map(|v| v.as_str().to_owned()),
                labels: scalar_map(rule.get("labels")),
                annotations: scalar_map(rule.get("annotations")),
            });
        }
    }
    out
}

const POOL_TEMPLATE: &str = "{{ $labels.db_client_connection_pool_name }}";
const INSTANCE_TEMPLATE: &str = "{{ $labels.instance }}";
const SITE_TEMPLATE: &str = "{{ $labels.poolwatch_site }}";

#[test]
fn alerts_say_how_long_how_bad_where_and_what_next() {
    let alerts: Vec<Rule> = rules()
        .into_iter()
        .filter(|r| r.kind == Kind::Alert)
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in &alerts {
        let name = &alert.name;
        assert!(
            name.starts_with("Poolwatch"),
            "{name}: alert names start with Poolwatch"
        );
        let for_ = alert
            .for_
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no `for:`"));
        assert!(
            !for_.is_empty() && for_.chars().next().unwrap().is_ascii_digit(),
            "{name}: for: {for_:?}"
        );
        let severity = alert.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        let summary = alert
            .annotations
            .get("summary")
            .unwrap_or_else(|| panic!("{name}: no summary"));
        let description = alert
            .annotations
            .get("description")
            .unwrap_or_else(|| panic!("{name}: no description"));
        for (what, text) in [("summary", summary), ("description", description)] {
            for template in [POOL_TEMPLATE, INSTANCE_TEMPLATE] {
                assert!(
                    text.contains(template),
                    "{name}: {what} lacks {template}: {text}"
                );
            }
        }
        assert!(
            description.contains("Next:") && description.contains("poolwatch"),
            "{name}: the description says what to look at next: {description}"
        );
        if alert.expr.contains("poolwatch_site") {
            assert!(
                summary.contains(SITE_TEMPLATE),
                "{name}: summary names the site"
            );
            assert!(
                description.contains(SITE_TEMPLATE),
                "{name}: description names the site"
            );
            assert!(
                description.contains("metrics_site_labels"),
                "{name}: says it needs metrics_site_labels"
            );
        }
    }
}

#[test]
fn recording_rules_are_named_level_metric_operations_and_used() {
    let rules = rules();
    let dashboard: Vec<String> = dashboard_exprs().into_iter().map(|(_, e)| e).collect();
    for rule in rules.iter().filter(|r| r.kind == Kind::Record) {
        let parts: Vec<&str> = rule.name.split(':').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| !p.is_empty()),
            "{}: not level:metric:operations",
            rule.name
        );
        let used = rules
            .iter()
            .filter(|r| r.name != rule.name)
            .map(|r| &r.expr)
            .chain(&dashboard)
            .any(|expr| metric_names_in(expr).contains(&rule.name));
        assert!(
            used,
            "{}: recorded but read by no rule and no panel",
            rule.name
        );
    }
}

/// Each alert has a unit test where it fires (`exp_alerts:` with entries)
/// and one where it does not (`exp_alerts: []`).
#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let tests = read(RULE_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.split("alertname: ").nth(1) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if line.contains("exp_alerts: []") {
                quiet.insert(name);
            } else if lines.get(i + 1) == Some(&"exp_alerts:")
                && lines
                    .get(i + 2)
                    .is_some_and(|l| l.starts_with("- exp_labels:") || l.starts_with('#'))
            {
                firing.insert(name);
            }
        }
    }
    for alert in rules().iter().filter(|r| r.kind == Kind::Alert) {
        assert!(
            firing.contains(&alert.name),
            "{}: no test where it fires",
            alert.name
        );
        assert!(
            quiet.contains(&alert.name),
            "{}: no test where it stays quiet",
            alert.name
        );
    }
}

// ---------------------------------------------------------------------------
// The dashboard

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(panels: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL text of the dashboard, with where it is: panel targets,
/// then the query variables' `label_values(…)`.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut out = Vec::new();
    for panel in all_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let what = format!(
                    "panel {} {:?} {}",
                    panel["id"], panel["title"], target["refId"]
                );
                out.push((what, expr.to_owned()));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]
                .get("query")
                .or(Some(&var["query"]))
                .and_then(|q| q.as_str())
                .unwrap_or_else(|| panic!("variable {}: no query", var["name"]));
            out.push((format!("variable {}", var["name"]), query.to_owned()));
        }
    }
    out
}

fn grid(panel: &serde_json::Value) -> [i64; 4] {
    let pos = &panel["gridPos"];
    ["x", "y", "w", "h"].map(|k| {
        pos[k].as_i64().unwrap_or_else(|| {
            panic!(
                "panel {} {}: gridPos.{k} missing",
                panel["id"], panel["title"]
            )
        })
    })
}

#[test]
fn dashboard_structure() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "uid"
    );
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title"
    );

    // The variables: a Prometheus data source, then job, instance and pool
    // from label_values over that data source.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for (name, label) in [
        ("job", "job"),
        ("instance", "instance"),
        ("pool", "db_client_connection_pool_name"),
    ] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        let query = v["query"]["query"].as_str().unwrap_or_default();
        assert!(
            query.starts_with("label_values(") && query.ends_with(&format!(", {label})")),
            "{name}: {query}"
        );
    }

    let panels = all_panels(&dashboard);
    assert!(panels.len() > 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
    for panel in &panels {
        let id = panel["id"]
            .as_i64()
            .unwrap_or_else(|| panel_error(panel, "no numeric id"));
        assert!(ids.insert(id), "panel id {id} twice");
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel {id}: no title");
        let ds = &panel["datasource"];
        assert!(
            ds["type"] == "prometheus" && ds["uid"] == "${datasource}",
            "panel {id} {title}: datasource {ds}"
        );
        let [x, y, w, h] = grid(panel);
        assert!(
            x >= 0 && y >= 0 && w >= 1 && h >= 1 && x + w <= 24,
            "panel {id} {title}: gridPos"
        );
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "panel {id} {title} overlaps {other}");
        }
        boxes.push((format!("{id} {title}"), [x, y, w, h]));

        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panel_error(panel, "no targets"));
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {id} {title}: a target without expr"
            );
            let ref_id = target["refId"].as_str().unwrap_or_default();
            assert!(
                !ref_id.is_empty() && ref_ids.insert(ref_id),
                "panel {id} {title}: refId {ref_id:?}"
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {id} {title}"
            );
            if panel["type"] == "heatmap" {
                assert_eq!(target["format"], "heatmap", "panel {id} {title}");
                assert!(
                    expr.contains("_bucket") && expr.contains("by (le)"),
                    "panel {id}: {expr}"
                );
            }
        }
    }
}

fn panel_error(panel: &serde_json::Value, what: &str) -> ! {
    panic!("panel {} {}: {what}", panel["id"], panel["title"])
}

/// The dashboard reads recording rules of the rules file, or raw names.
#[test]
fn dashboard_reads_only_defined_recording_rules() {
    let recorded: BTreeSet<String> = rules()
        .into_iter()
        .filter(|r| r.kind == Kind::Record)
        .map(|r| r.name)
        .collect();
    for (what, expr) in dashboard_exprs() {
        for name in metric_names_in(&expr) {
            assert!(
                !name.contains(':') || recorded.contains(&name),
                "{what}: {name} is no recording rule of {RULES}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Metric names

/// Every raw metric name the rules and the dashboard read, as exported
/// (`db_client_connection_wait_time_seconds_bucket`, `…_total`): recording
/// rule names are replaced by the raw names their expressions read, down
/// to raw names. The rules' own exprs and the dashboard's queries (panel
/// targets and variable queries) count.
pub fn metric_names_used() -> BTreeSet<String> {
    let rules = rules();
    let recorded: BTreeMap<String, BTreeSet<String>> = rules
        .iter()
        .filter(|r| r.kind == Kind::Record)
        .map(|r| (r.name.clone(), metric_names_in(&r.expr)))
        .collect();
    let exprs = rules
        .iter()
        .map(|r| r.expr.clone())
        .chain(dashboard_exprs().into_iter().map(|(_, e)| e));
    let mut used = BTreeSet::new();
    for expr in exprs {
        for name in metric_names_in(&expr) {
            resolve(&name, &recorded, &mut Vec::new(), &mut used);
        }
    }
    used
}

fn resolve(
    name: &str,
    recorded: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    out: &mut BTreeSet<String>,
) {
    let Some(inputs) = recorded.get(name) else {
        out.insert(name.to_owned());
        return;
    };
    assert!(
        !path.iter().any(|p| p == name),
        "recording rules in a cycle: {path:?} {name}"
    );
    path.push(name.to_owned());
    for input in inputs {
        resolve(input, recorded, path, out);
    }
    path.pop();
}

/// PromQL keywords that are never metric names (matched case-insensitively,
/// as PromQL does): binary and set operators, modifiers, aggregation
/// operators and number words.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "count_values",
    "quantile",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
    "start",
    "end",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal opening at `start` (`"…"`, `'…'`
/// with backslash escapes, `` `…` `` raw).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    assert!(
        i < chars.len(),
        "unterminated string in {:?}",
        chars.iter().collect::<String>()
    );
    i + 1
}

/// The contents of the string literal opening at `start`, unescaped
/// (simple escapes only), and the index after it.
fn string_at(chars: &[char], start: usize) -> (String, usize) {
    let end = skip_string(chars, start);
    let mut value = String::new();
    let mut i = start + 1;
    while i < end - 1 {
        if chars[i] == '\\' && chars[start] != '`' {
            i += 1;
        }
        value.push(chars[i]);
        i += 1;
    }
    (value, end)
}

/// The index after the bracket closing the one opening at `start`,
/// skipping strings.
fn skip_balanced(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        chars.iter().collect::<String>()
    )
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// `a, b(c, d), "e,f"` → `["a", "b(c, d)", "\"e,f\""]`: split at the commas
/// outside brackets and strings.
fn top_level_args(args: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = args.char_indices().collect();
    let plain: Vec<char> = chars.iter().map(|&(_, c)| c).collect();
    let mut out = Vec::new();
    let (mut depth, mut from, mut i) = (0i32, 0usize, 0usize);
    while i < plain.len() {
        match plain[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&plain, i);
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(args[from..chars[i].0].trim());
                from = chars[i].0 + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(args[from..].trim());
    out
}

/// The metric names a PromQL expression reads: identifiers that are not
/// keywords, function names (followed by `(`), label names (inside `{…}`,
/// or the lists of `by`/`without`/`on`/`ignoring`/`group_left`/
/// `group_right`), numbers or durations (also inside `[…]`), strings, or
/// comments. `{__name__="x"}` reads `x`. Grafana's `$variables` and
/// `label_values(selector, label)` are understood too.
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    scan(&chars, &mut names);
    names
}

fn scan(chars: &[char], names: &mut BTreeSet<String>) {
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(chars, i);
        } else if c == '[' {
            // A range or subquery: durations, Grafana's `$__rate_interval`.
            i = skip_balanced(chars, i, '[', ']');
        } else if c == '{' {
            let end = skip_balanced(chars, i, '{', '}');
            matchers(&chars[i + 1..end - 1], names);
            i = end;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_balanced(chars, i, '{', '}');
            } else {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (`0.99`, `1e-9`, `0x1f`) or a duration (`5m`, `1h30m`).
            i += 1;
            while i < chars.len()
                && (is_ident_char(chars[i])
                    || chars[i] == '.'
                    || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let lower = ident.to_ascii_lowercase();
            let next = skip_spaces(chars, i);
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_balanced(chars, next, '(', ')');
                }
            } else if chars.get(next) == Some(&'(') && !KEYWORDS.contains(&lower.as_str()) {
                if ident == "label_values" {
                    // Grafana: `label_values(label)` or
                    // `label_values(selector, label)`.
                    let end = skip_balanced(chars, next, '(', ')');
                    let inner: String = chars[next + 1..end - 1].iter().collect();
                    let args = top_level_args(&inner);
                    if args.len() == 2 {
                        scan(&args[0].chars().collect::<Vec<_>>(), names);
                    }
                    i = end;
                }
                // Otherwise a function: its arguments are scanned as they come.
            } else if !KEYWORDS.contains(&lower.as_str()) {
                names.insert(ident);
            }
        } else {
            // Operators, parentheses, commas, `@`.
            i += 1;
        }
    }
}

/// Label matchers (`a="x", b=~"y"`): only `__name__="x"` names a metric.
fn matchers(chars: &[char], names: &mut BTreeSet<String>) {
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(chars, i);
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let label: String = chars[start..i].iter().collect();
            let j = skip_spaces(chars, i);
            let op: String = chars[j..]
                .iter()
                .take_while(|c| matches!(c, '=' | '!' | '~'))
                .collect();
            if label == "__name__" {
                assert_eq!(op, "=", "__name__{op}: a pattern names no metric to check");
                let at = skip_spaces(chars, j + op.len());
                let (name, end) = string_at(chars, at);
                names.insert(name);
                i = end;
            }
        } else {
            i += 1;
        }
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn metric_names_in_skips_what_is_not_a_metric() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (
            "sum by (job, le) (rate(a_bucket{le=\"0.1\", job=~\"x|y\"}[5m]))",
            &["a_bucket"],
        ),
        ("sum(rate(a_total[5m])) without (instance)", &["a_total"]),
        ("a / on (job, instance) group_left (site) b", &["a", "b"]),
        ("a / ignoring(state) group_right b", &["a", "b"]),
        ("a > on() group_left vector(1)", &["a"]),
        ("a and on (job) b > 0 or c unless d", &["a", "b", "c", "d"]),
        ("a > bool 1e-9", &["a"]),
        (
            "histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval])))",
            &["x_bucket"],
        ),
        ("a offset 1h30m", &["a"]),
        ("a @ start()", &["a"]),
        ("rate(a[5m:1m])", &["a"]),
        (
            "topk(10, level:metric:op{job=~\"$job\"})",
            &["level:metric:op"],
        ),
        ("count_values(\"version\", build_info)", &["build_info"]),
        (
            "label_replace(a, \"dst\", \"$1\", \"src\", \"(.*)\")",
            &["a"],
        ),
        ("{__name__=\"a_total\", job=\"x\"}", &["a_total"]),
        ("a # a comment naming b\n+ c", &["a", "c"]),
        ("a > Inf or b < NaN", &["a", "b"]),
        ("SUM BY (job) (a)", &["a"]),
        ("rate (a[5m])", &["a"]),
        ("a{s=\"}{\\\"by (x)\"} + b", &["a", "b"]),
        ("label_values(db_max{job=~\"$job\"}, instance)", &["db_max"]),
        ("label_values(job)", &[]),
        ("a[${__range}] or b", &["a", "b"]),
        ("quantile(0.5, a) + 0x1f", &["a"]),
    ];
    for (expr, want) in cases {
        assert_eq!(metric_names_in(expr), set(want), "{expr}");
    }
}

/// The exported names the assets depend on: the check against a live
/// `/metrics` asserts these are rendered.
#[test]
fn metric_names_used_is_exactly_this_set() {
    let want = set(&[
        "db_client_connection_count",
        "db_client_connection_create_time_seconds_bucket",
        "db_client_connection_create_time_seconds_count",
        "db_client_connection_max",
        "db_client_connection_pending_requests",
        "db_client_connection_timeouts_total",
        "db_client_connection_use_time_seconds_bucket",
        "db_client_connection_use_time_seconds_sum",
        "db_client_connection_wait_time_seconds_bucket",
        "db_client_connection_wait_time_seconds_count",
        "db_client_operation_duration_seconds_bucket",
        "db_client_operation_duration_seconds_count",
        "poolwatch_acquire_cancelled_total",
        "poolwatch_acquire_failures_total",
        "poolwatch_acquire_nested_total",
        "poolwatch_acquire_oldest_wait_seconds",
        "poolwatch_hold_busy_time_seconds_sum",
        "poolwatch_hold_endings_total",
        "poolwatch_hold_error_paths_total",
        "poolwatch_hold_oldest_seconds",
        "poolwatch_hold_past_threshold_total",
        "poolwatch_leaks_flagged_total",
        "poolwatch_leaks_never_returned_total",
        "poolwatch_leaks_returned_after_flagged_total",
        "poolwatch_site_use_time_seconds_sum",
        "poolwatch_site_wait_time_seconds_sum",
    ]);
    let got = metric_names_used();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "metric_names_used(): missing {missing:?}, unexpected {extra:?}"
    );
}

// ---------------------------------------------------------------------------
// The rules file read with yaml-rust2 (a maintained YAML 1.2 parser), as
// plain nodes; promtool checks the same file and `promtool_check_rules`
// compares the rule counts.

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Scalar(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Yaml::Scalar(s) => s,
            other => panic!("expected a scalar, got {other:?}"),
        }
    }

    fn as_seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            other => panic!("expected a sequence, got {other:?}"),
        }
    }

    fn from_node(node: &yaml_rust2::Yaml) -> Result<Yaml, String> {
        use yaml_rust2::Yaml as Y;
        Ok(match node {
            Y::String(s) | Y::Real(s) => Yaml::Scalar(s.clone()),
            Y::Integer(i) => Yaml::Scalar(i.to_string()),
            Y::Boolean(b) => Yaml::Scalar(b.to_string()),
            Y::Null => Yaml::Scalar(String::new()),
            Y::Array(items) => Yaml::Seq(
                items
                    .iter()
                    .map(Yaml::from_node)
                    .collect::<Result<_, _>>()?,
            ),
            Y::Hash(entries) => Yaml::Map(
                entries
                    .iter()
                    .map(|(k, v)| match k {
                        Y::String(k) => Ok((k.clone(), Yaml::from_node(v)?)),
                        other => Err(format!("a key that is not a string: {other:?}")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => return Err(format!("unexpected YAML node {other:?}")),
        })
    }
}

fn parse_yaml(text: &str) -> Result<Yaml, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.as_slice() {
        [doc] => Yaml::from_node(doc),
        docs => Err(format!("{} YAML documents, expected one", docs.len())),
    }
}

// ---------------------------------------------------------------------------
// Against the example service's live `/metrics`.

/// The example service's router, recorder and pool (`examples/service/`).
#[cfg(all(feature = "postgres", feature = "metrics", feature = "serde"))]
#[path = "../examples/service/app.rs"]
#[allow(dead_code)]
mod app;

#[cfg(all(feature = "postgres", feature = "metrics", feature = "serde"))]
mod support;

/// The metric names in a Prometheus text exposition (each sample line's
/// name, before its labels or value).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn exported_names_reads_sample_lines_only() {
    let text = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v w\"} 1\nb_seconds_bucket{le=\"0.1\"} 2\nc 3\n\n";
    assert_eq!(
        exported_names(text),
        set(&["a_total", "b_seconds_bucket", "c"])
    );
}

/// Every metric the rules and the dashboard read is in what the example
/// service serves at `/metrics` after a little traffic, so a rename in
/// `poolwatch::export` cannot leave `deploy/` reading series that no
/// longer exist.
#[cfg(all(feature = "postgres", feature = "metrics", feature = "serde"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_exported() {
    let prometheus = app::install_metrics().expect("the recorder installs");
    let pg_config = support::pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"));
    let pool = app::pool(pg_config).expect("the service's pool builds");
    app::migrate(&pool).await.expect("the service's table");
    let router = app::router(app::App {
        pool: pool.clone(),
        prometheus,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let metrics = tokio::task::spawn_blocking(move || {
        app::exercise(addr).expect("the service answers");
        app::http(addr, "GET", "/metrics").expect("/metrics answers")
    })
    .await
    .unwrap();
    assert_eq!(metrics.0, 200);
    let exported = exported_names(&metrics.1);
    let used = metric_names_used();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "deploy/ reads metrics the example service does not export: {missing:?}\nexported: {exported:#?}"
    );
}
