//! A strict reader of the Prometheus text format (0.0.4) for the metrics tests: well-formed
//! HELP/TYPE lines, families not interleaved, histograms whose buckets add up.

use std::collections::{BTreeMap, HashMap, HashSet};

use reqwest::StatusCode;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// family → type
    pub types: HashMap<String, String>,
    pub helps: HashMap<String, String>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t if t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) =>
        {
            t.parse().ok()
        }
        _ => None,
    }
}

/// `{a="x",b="y"}` (escapes `\\`, `\"`, `\n`) → labels and the rest of the line.
fn parse_labels(line: &str, text: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    assert_eq!(chars.next(), Some('{'));
    loop {
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        assert!(
            valid_label_name(&name),
            "bad label name {name:?} in {line:?}"
        );
        assert_eq!(chars.next(), Some('='), "{line:?}");
        assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(name.clone(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("expected , or }} after a label, got {other:?} in {line:?}"),
        }
    }
    (labels, chars.collect())
}

/// The family a sample belongs to: histogram samples carry a suffix.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Parses the Prometheus text format (0.0.4) strictly enough to catch a broken exposition:
/// well-formed HELP/TYPE lines, each at most once and before the family's samples, families
/// not interleaved, every sample `name{labels} value` with a float value.
pub fn parse_prometheus(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the exposition does not end with a newline"
    );
    let mut e = Exposition::default();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = parts.next().unwrap_or_default().to_string();
            let rest = parts.next().unwrap_or_default().to_string();
            assert!(valid_metric_name(&name), "bad name in {line:?}");
            assert!(
                !e.samples
                    .iter()
                    .any(|s| family_of(&s.name, &e.types) == name),
                "{keyword} of {name} after its samples"
            );
            if keyword == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&rest.as_str()),
                    "bad type in {line:?}"
                );
                assert!(
                    e.types.insert(name.clone(), rest).is_none(),
                    "TYPE of {name} twice"
                );
            } else {
                assert!(!rest.is_empty(), "empty HELP in {line:?}");
                assert!(
                    e.helps.insert(name.clone(), rest).is_none(),
                    "HELP of {name} twice"
                );
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "bad metric name in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(line, &line[name_end..])
        } else {
            (BTreeMap::new(), line[name_end..].to_string())
        };
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| panic!("value is not a float in {line:?}"));
        if let Some(ts) = fields.next() {
            assert!(ts.parse::<i64>().is_ok(), "bad timestamp in {line:?}");
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        let family = family_of(name, &e.types);
        assert!(
            e.types.contains_key(&family),
            "sample of {family} without a TYPE line"
        );
        if current.as_deref() != Some(family.as_str()) {
            if let Some(previous) = current.take() {
                finished.insert(previous);
            }
            assert!(
                !finished.contains(&family),
                "samples of {family} are not together"
            );
            current = Some(family);
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    e
}

impl Exposition {
    pub fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample of `name` with (at least) these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .find(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "several {name} {labels:?}: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    pub fn gauge(&self, name: &str) -> f64 {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("gauge"),
            "{name} is not a gauge"
        );
        self.value(name, &[]).unwrap_or_else(|| panic!("no {name}"))
    }

    /// Histogram buckets per route: non-decreasing, ending in +Inf equal to `_count`.
    pub fn check_histograms(&self, family: &str) -> BTreeMap<String, f64> {
        assert_eq!(
            self.types.get(family).map(String::as_str),
            Some("histogram")
        );
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in self.find(&format!("{family}_bucket")) {
            let le = s.labels.get("le").expect("bucket without le");
            let bound = parse_value(le).unwrap_or_else(|| panic!("bad le {le:?}"));
            let route = s.labels.get("route").expect("route").clone();
            buckets.entry(route).or_default().push((bound, s.value));
        }
        assert!(!buckets.is_empty(), "no buckets of {family}");
        let mut counts = BTreeMap::new();
        for (route, mut series) in buckets {
            series.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("le is a number"));
            for pair in series.windows(2) {
                assert!(pair[0].0 < pair[1].0, "le {} twice for {route}", pair[0].0);
                assert!(
                    pair[0].1 <= pair[1].1,
                    "buckets of {route} decrease: {series:?}"
                );
            }
            let (last_bound, last) = *series.last().unwrap();
            assert_eq!(last_bound, f64::INFINITY, "no +Inf bucket for {route}");
            let route_label = [("route", route.as_str())];
            let count = self
                .value(&format!("{family}_count"), &route_label)
                .unwrap_or_else(|| panic!("no _count for {route}"));
            let sum = self
                .value(&format!("{family}_sum"), &route_label)
                .unwrap_or_else(|| panic!("no _sum for {route}"));
            assert_eq!(last, count, "+Inf bucket != _count for {route}");
            assert!(sum >= 0.0, "negative _sum for {route}");
            counts.insert(route, count);
        }
        counts
    }
}

pub const ROUTE_TEMPLATES: &[&str] = &[
    "/health",
    "/auth/users",
    "/auth/users/me",
    "/auth/jwt/create",
    "/auth/jwt/refresh",
    "/auth/jwt/verify",
    "/auth/password",
    "/auth/password/reset",
    "/auth/password/reset/confirm",
    "/device/*",
    "/prekeys/:regId",
    "/kyberprekeys/:regId",
    "/signedprekey/:regId",
    "/prekeybundle/:username/:regId",
    "/messages/:regId",
    "/messages/:regId/ws",
    "other",
];

pub async fn scrape(http: &reqwest::Client, url: &str) -> Exposition {
    let res = http.get(url).send().await.expect("GET /metrics");
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    parse_prometheus(&res.text().await.expect("body"))
}

/// Per route, the sum of `signal_server_http_requests_total`.
pub fn requests_by_route(e: &Exposition) -> BTreeMap<String, f64> {
    let mut by_route = BTreeMap::new();
    for s in e.find("signal_server_http_requests_total") {
        *by_route.entry(s.labels["route"].clone()).or_insert(0.0) += s.value;
    }
    by_route
}
