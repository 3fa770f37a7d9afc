//! The demo page's placeholders: the page itself says what it needs from its server.
//!
//! `demo-site/index.html` carries `{{name}}` where a server must supply a value (the CDN
//! path, the bundle's SRI hash, the model URL and SHA-256) and `{{name|default}}` where a
//! server may (the dev server's test knobs); nothing else may start with `{{`. The node and
//! the dev server (`demo-site/server.mjs`) fill it by the same rules, which
//! `demo-site/tests/data/template-cases.json` pins for both, and both refuse a page they
//! cannot fill completely: a placeholder the page adds without a default is an error
//! naming it, never a literal `{{…}}` left in what the browser gets.
//!
//! ```
//! use kwaainet_p2p::http::template::fill;
//! let page = fill(r#"<b title="{{who}}">{{n|3}}</b>"#, |k| (k == "who").then(|| "a&b".to_owned()));
//! assert_eq!(page.unwrap(), r#"<b title="a&amp;b">3</b>"#);
//! ```

use std::fmt;

/// Why a page could not be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// Required placeholders (no default) that the server has no value for.
    Missing(Vec<String>),
    /// Something starting with `{{` that is not a placeholder (at this byte offset).
    Malformed(usize),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(names) => {
                let list: Vec<String> = names.iter().map(|n| format!("{{{{{n}}}}}")).collect();
                write!(f, "this server has no value for {}", list.join(", "))
            }
            Self::Malformed(at) => write!(
                f,
                "malformed placeholder at byte {at} (expected {{{{name}}}} or {{{{name|default}}}})"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Escapes a value for a double-quoted HTML attribute (or text).
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Fills `template`: `{{name}}` with `value(name)` (escaped), `{{name|default}}` with
/// `value(name)` (escaped) or else `default` as written. Every missing required name is
/// reported at once.
pub fn fill(
    template: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let at = template.len() - rest.len() + open;
        out.push_str(&rest[..open]);
        let body_and_after = &rest[open + 2..];
        let close = body_and_after
            .find("}}")
            .ok_or(TemplateError::Malformed(at))?;
        let body = &body_and_after[..close];
        let (name, default) = match body.split_once('|') {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if !valid_name(name) || default.is_some_and(|d| d.contains("{{")) {
            return Err(TemplateError::Malformed(at));
        }
        match (value(name), default) {
            (Some(v), _) => out.push_str(&escape_attr(&v)),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_owned());
                }
            }
        }
        rest = &body_and_after[close + 2..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(TemplateError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn repo_file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// The cases the dev server's filler runs too (demo-site/tests/template.test.mjs).
    #[test]
    fn shared_cases() {
        let text = std::fs::read_to_string(repo_file("demo-site/tests/data/template-cases.json"))
            .expect("demo-site/tests/data/template-cases.json");
        let cases: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let cases = cases["cases"].as_array().expect("cases");
        assert!(cases.len() >= 5);
        for case in cases {
            let name = case["name"].as_str().unwrap_or("?");
            let template = case["template"].as_str().expect("template");
            let values: HashMap<String, String> =
                serde_json::from_value(case["values"].clone()).expect("values");
            let got = fill(template, |k| values.get(k).cloned());
            match (&case["output"], &case["missing"], &case["malformedAt"]) {
                (serde_json::Value::String(want), _, _) => {
                    assert_eq!(got.as_deref().ok(), Some(want.as_str()), "case {name}");
                }
                (_, serde_json::Value::Array(want), _) => {
                    let want: Vec<String> = want
                        .iter()
                        .map(|v| v.as_str().unwrap_or_default().to_owned())
                        .collect();
                    assert_eq!(got, Err(TemplateError::Missing(want)), "case {name}");
                }
                (_, _, serde_json::Value::Number(at)) => {
                    let at = usize::try_from(at.as_u64().expect("offset")).expect("offset");
                    assert_eq!(got, Err(TemplateError::Malformed(at)), "case {name}");
                }
                _ => panic!("case {name}: no expected output, missing or malformedAt"),
            }
        }
    }

    /// The demo page as committed is filled completely by what the node knows.
    #[test]
    fn the_demo_page_needs_only_what_the_node_has() {
        let page = std::fs::read_to_string(repo_file("demo-site/index.html")).expect("index.html");
        let filled = fill(&page, |k| {
            super::super::node_value(k, Some("/cdn/v1/"), Some("sha384-x"), Some(("/m", "ab")))
        })
        .unwrap_or_else(|e| panic!("demo-site/index.html: {e}"));
        assert!(!filled.contains("{{"), "an unfilled placeholder is left");
        assert!(filled.contains(r#"src="/cdn/v1/distributed-ai.js""#));
        assert!(filled.contains(r#"integrity="sha384-x""#));
        assert!(filled.contains(r#"data-model-sha256="ab""#));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = fill("{{a}} {{b}} {{a}}", |_| None).unwrap_err();
        assert_eq!(e.to_string(), "this server has no value for {{a}}, {{b}}");
        let e = fill("x {{not closed", |_| None).unwrap_err();
        assert_eq!(e, TemplateError::Malformed(2));
        assert!(e.to_string().contains("byte 2"));
    }
}
