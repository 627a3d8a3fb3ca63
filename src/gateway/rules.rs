//! A route's rules: path templates with a permission per method, checked
//! as a whole. A request on a route with rules goes on only when a rule's
//! template matches its whole normalised path and the rule names its
//! method; it is then asked of authz with that method's permission, at the
//! resource the rule builds from the path's variables. A request that no
//! rule covers, by path or by method, is refused: it is never let through
//! under another path's or another method's permission.
//!
//! A template is the path in normal form, whose segments are literal text,
//! `{name}` (any one segment) or, last, `{name*}` (whatever follows, one
//! segment or more). Where several templates match a path, the one whose
//! first differing segment is the more literal wins, so
//! `/billing/invoices/summary` is not taken by `/billing/invoices/{id}`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::RouteRule;
use crate::middleware::names::{Permission, Resource};

/// One segment of a template, ordered from the most literal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Literal(String),
    /// One segment, bound to the name.
    One(String),
    /// Whatever follows, one segment or more, bound to the name.
    Rest(String),
}

impl Segment {
    /// How literal the segment is: lower wins.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::One(_) => 1,
            Segment::Rest(_) => 2,
        }
    }
}

/// A rule ready to match: its template, its permissions by method, and its
/// resource template.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The template as configured, for messages.
    path: String,
    segments: Vec<Segment>,
    permissions: BTreeMap<String, Arc<str>>,
    /// Literal text and variable names, in order.
    resource: Option<Vec<Part>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Variable(String),
}

/// What a route's rules make of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cover {
    /// Asked of authz: the method's permission, at the resource (at the
    /// permission's type when the rule names none, or when the path's
    /// values do not make a valid resource name).
    Ask {
        permission: Arc<str>,
        resource: Option<String>,
    },
    /// No rule covers the path, or the rule that does names no permission
    /// for the method.
    Uncovered,
}

/// A rule the configuration gives that cannot be used; the message names
/// the rule and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(String);

/// Compiles a route's rules, each checked against the route's `prefix`
/// segments; the first problem found is the error, naming the rule.
pub fn compile(prefix: &[String], rules: &[RouteRule]) -> Result<Vec<Rule>, RuleError> {
    let mut compiled: Vec<Rule> = rules
        .iter()
        .map(|r| compile_one(prefix, r).map_err(|e| RuleError(format!("rule {:?}: {e}", r.path))))
        .collect::<Result<_, _>>()?;
    compiled.sort_by_cached_key(|r| r.segments.iter().map(Segment::rank).collect::<Vec<_>>());
    for pair in compiled.windows(2) {
        if same_shape(&pair[0].segments, &pair[1].segments) {
            return Err(RuleError(format!(
                "rules {:?} and {:?} match the same paths",
                pair[0].path, pair[1].path
            )));
        }
    }
    Ok(compiled)
}

/// Whether two templates match exactly the same paths.
fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (x, y) => x.rank() == y.rank(),
        })
}

fn compile_one(prefix: &[String], rule: &RouteRule) -> Result<Rule, RuleError> {
    let path = rule.path.as_str();
    if !path.starts_with('/') || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return Err(RuleError(
            "a template is a path in normal form, from the root".into(),
        ));
    }
    let mut segments = Vec::new();
    let raw: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    for (n, text) in raw.iter().enumerate() {
        let segment = match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) => match name.strip_suffix('*') {
                Some(name) if n + 1 == raw.len() => Segment::Rest(variable(name)?),
                Some(_) => return Err(RuleError("only the last segment may be {name*}".into())),
                None => Segment::One(variable(name)?),
            },
            None if text.contains(['{', '}']) => {
                return Err(RuleError(format!(
                    "segment {text:?}: a variable is a whole segment, {{name}}"
                )));
            }
            None if matches!(*text, "." | "..") || text.contains('%') => {
                return Err(RuleError(format!("segment {text:?} is not in normal form")));
            }
            None => Segment::Literal((*text).to_owned()),
        };
        segments.push(segment);
    }
    let names: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::One(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    if names
        .iter()
        .enumerate()
        .any(|(i, n)| names[..i].contains(n))
    {
        return Err(RuleError("a variable is named twice".into()));
    }
    let under_prefix = segments.len() >= prefix.len()
        && prefix
            .iter()
            .zip(&segments)
            .all(|(p, s)| *s == Segment::Literal(p.clone()));
    if !under_prefix {
        return Err(RuleError(
            "the template must start with the route's prefix".into(),
        ));
    }
    if rule.methods.is_empty() {
        return Err(RuleError(
            "the rule names no method (GET = \"type:action\", ...)".into(),
        ));
    }
    let mut permissions = BTreeMap::new();
    for (method, permission) in &rule.methods {
        let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
        if !valid {
            return Err(RuleError(format!(
                "{method:?} is not a method in capitals (GET, POST, ...), nor `path` or `resource`"
            )));
        }
        if method == "CONNECT" || method == "TRACE" {
            return Err(RuleError(format!("{method} is never forwarded")));
        }
        Permission::parse_asked(permission).map_err(|e| RuleError(format!("{method}: {e}")))?;
        permissions.insert(method.clone(), Arc::from(permission.as_str()));
    }
    let resource = rule
        .resource
        .as_deref()
        .map(|r| resource_template(r, &names))
        .transpose()?;
    Ok(Rule {
        path: rule.path.clone(),
        segments,
        permissions,
        resource,
    })
}

fn variable(name: &str) -> Result<String, RuleError> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(RuleError(format!(
            "variable {name:?}: letters, digits and underscores only"
        )))
    }
}

/// `type:{id}` and the like: text and the path's variables. With every
/// variable given a plain value it must make a valid resource name.
fn resource_template(text: &str, names: &[&str]) -> Result<Vec<Part>, RuleError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        let close = after
            .find('}')
            .ok_or_else(|| RuleError(format!("resource {text:?}: a `{{` is not closed")))?;
        let name = &after[1..close];
        if !names.contains(&name) {
            return Err(RuleError(format!(
                "resource {text:?}: {{{name}}} is not a variable of the path"
            )));
        }
        if !before.is_empty() {
            parts.push(Part::Text(before.to_owned()));
        }
        parts.push(Part::Variable(name.to_owned()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(RuleError(format!(
            "resource {text:?}: a `}}` is not opened"
        )));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    let sample = fill(&parts, &|_| Some("x"));
    match sample {
        Some(s) if Resource::parse(&s).is_ok() => Ok(parts),
        _ => Err(RuleError(format!(
            "resource {text:?} does not make a resource name (type:id)"
        ))),
    }
}

/// The resource template with each variable's value.
fn fill<'v>(parts: &[Part], value: &dyn Fn(&str) -> Option<&'v str>) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Variable(n) => out.push_str(value(n)?),
        }
    }
    Some(out)
}

/// What `rules` (compiled, most literal first) make of `method` on `path`.
pub fn cover(rules: &[Rule], method: &str, path: &[Cow<'_, str>]) -> Cover {
    let Some((rule, bound)) = rules.iter().find_map(|r| r.bind(path).map(|b| (r, b))) else {
        return Cover::Uncovered;
    };
    // HEAD asks what GET would, unless the rule names it.
    let permission = rule
        .permissions
        .get(method)
        .or_else(|| (method == "HEAD").then(|| rule.permissions.get("GET"))?);
    let Some(permission) = permission else {
        return Cover::Uncovered;
    };
    let resource = rule.resource.as_ref().and_then(|parts| {
        let value = |name: &str| {
            bound
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        fill(parts, &value).filter(|r| Resource::parse(r).is_ok())
    });
    Cover::Ask {
        permission: permission.clone(),
        resource,
    }
}

impl Rule {
    /// The variables' values when the template matches the whole path.
    fn bind<'r>(&'r self, path: &[Cow<'_, str>]) -> Option<Vec<(&'r str, String)>> {
        let mut bound = Vec::new();
        for (at, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(text) => {
                    if path.get(at).map(|s| s.as_ref()) != Some(text.as_str()) {
                        return None;
                    }
                }
                Segment::One(name) => bound.push((name.as_str(), path.get(at)?.to_string())),
                Segment::Rest(name) => {
                    let rest = path.get(at..).filter(|r| !r.is_empty())?;
                    bound.push((name.as_str(), rest.join("/")));
                    return Some(bound);
                }
            }
        }
        (path.len() == self.segments.len()).then_some(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::routes::normalise;

    fn rule(path: &str, methods: &[(&str, &str)], resource: Option<&str>) -> RouteRule {
        RouteRule {
            path: path.into(),
            resource: resource.map(Into::into),
            methods: methods
                .iter()
                .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
                .collect(),
        }
    }

    fn billing() -> Vec<Rule> {
        compile(
            &["billing".into()],
            &[
                rule(
                    "/billing/invoices/{id}",
                    &[
                        ("GET", "billing.invoices:read"),
                        ("POST", "billing.invoices:write"),
                    ],
                    Some("billing.invoices:{id}"),
                ),
                rule(
                    "/billing/invoices/summary",
                    &[("GET", "billing.reports:read")],
                    None,
                ),
                rule(
                    "/billing/files/{path*}",
                    &[("GET", "billing.files:read")],
                    Some("billing.files:{path}"),
                ),
            ],
        )
        .unwrap()
    }

    fn ask(permission: &str, resource: Option<&str>) -> Cover {
        Cover::Ask {
            permission: Arc::from(permission),
            resource: resource.map(Into::into),
        }
    }

    #[test]
    fn a_request_is_covered_only_by_a_whole_template_and_its_method() {
        let rules = billing();
        let cover = |method: &str, path: &str| cover(&rules, method, &normalise(path).unwrap());
        assert_eq!(
            cover("GET", "/billing/invoices/42"),
            ask("billing.invoices:read", Some("billing.invoices:42"))
        );
        assert_eq!(
            cover("HEAD", "/billing/invoices/42"),
            ask("billing.invoices:read", Some("billing.invoices:42"))
        );
        assert_eq!(
            cover("POST", "/billing/invoices/42"),
            ask("billing.invoices:write", Some("billing.invoices:42"))
        );
        // The literal template wins over the variable one.
        assert_eq!(
            cover("GET", "/billing/invoices/summary"),
            ask("billing.reports:read", None)
        );
        assert_eq!(
            cover("GET", "/billing/files/2026/q1.pdf"),
            ask("billing.files:read", Some("billing.files:2026/q1.pdf"))
        );
        assert_eq!(
            cover("GET", "/billing/files/caf%C3%A9"),
            ask("billing.files:read", None),
            "a value that makes no resource name is asked at the type"
        );
        for (method, path) in [
            ("GET", "/billing/admin/42"),
            ("GET", "/billing/customers/42"),
            ("GET", "/billing/secrets/42/dump"),
            ("GET", "/billing/invoices/42/dump"),
            ("GET", "/billing/invoices"),
            ("GET", "/billing"),
            ("GET", "/billing/files"),
            ("DELETE", "/billing/invoices/42"),
            ("POST", "/billing/refunds/42"),
            ("POST", "/billing/invoices/summary"),
        ] {
            assert_eq!(cover(method, path), Cover::Uncovered, "{method} {path}");
        }
    }

    #[test]
    fn bad_rules_are_refused_naming_what_is_wrong() {
        let prefix = ["billing".to_owned()];
        let read = [("GET", "billing.invoices:read")];
        for (bad, says) in [
            (rule("/shop/{id}", &read, None), "prefix"),
            (rule("billing/{id}", &read, None), "normal form"),
            (rule("/billing//x", &read, None), "normal form"),
            (rule("/billing/../x", &read, None), "normal form"),
            (rule("/billing/x{id}", &read, None), "whole segment"),
            (rule("/billing/{a*}/x", &read, None), "last segment"),
            (rule("/billing/{a}/{a}", &read, None), "named twice"),
            (rule("/billing/{a-b}", &read, None), "letters"),
            (rule("/billing/{id}", &[], None), "no method"),
            (
                rule("/billing/{id}", &[("get", "a:read")], None),
                "capitals",
            ),
            (
                rule("/billing/{id}", &[("resourse", "a:b")], None),
                "capitals",
            ),
            (rule("/billing/{id}", &[("TRACE", "a:read")], None), "never"),
            (rule("/billing/{id}", &[("GET", "nonsense")], None), "GET"),
            (
                rule("/billing/{id}", &read, Some("billing.invoices:{nr}")),
                "not a variable",
            ),
            (rule("/billing/{id}", &read, Some("{id}")), "resource name"),
            (rule("/billing/{id}", &read, Some("t:{id")), "not closed"),
        ] {
            let e = compile(&prefix, std::slice::from_ref(&bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let twins = compile(
            &prefix,
            &[
                rule("/billing/{a}", &read, None),
                rule("/billing/{b}", &read, None),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(twins.contains("match the same paths"), "{twins}");
    }
}
