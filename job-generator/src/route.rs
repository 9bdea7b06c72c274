//! The check before sending: some enabled rule on the bus must route `jobs` events to
//! a target. EventBridge accepts events that no rule matches and drops them, so a run
//! against a pipeline that is not provisioned (yet) would report every job as sent
//! while none of them can ever end.

use aws_sdk_eventbridge::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde_json::Value;

/// The event source the pipeline's rule matches.
pub const SOURCE: &str = "jobs";

/// What the check found.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// This rule routes `jobs` events to at least one target.
    Found(String),
    /// No enabled rule with a target matches `jobs`.
    Missing,
    /// The caller may not list rules (a narrowly scoped role): nothing can be said.
    Unknown(String),
}

/// Whether an event pattern can match events of `source`: its `source` field lists it
/// (exactly, or by a prefix pattern), or it does not constrain the source at all.
pub fn pattern_matches_source(pattern: &str, source: &str) -> bool {
    let Ok(Value::Object(p)) = serde_json::from_str::<Value>(pattern) else {
        return false;
    };
    match p.get("source") {
        None => true,
        Some(Value::Array(options)) => options.iter().any(|o| match o {
            Value::String(s) => s == source,
            Value::Object(m) => m
                .get("prefix")
                .and_then(Value::as_str)
                .is_some_and(|prefix| source.starts_with(prefix)),
            _ => false,
        }),
        Some(_) => false,
    }
}

/// Looks for an enabled rule on `bus` that routes `jobs` events to a target.
pub async fn find(client: &aws_sdk_eventbridge::Client, bus: &str) -> Result<Route, String> {
    let mut next: Option<String> = None;
    loop {
        let page = match client
            .list_rules()
            .event_bus_name(bus)
            .set_next_token(next.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) if is_access_denied(e.code()) => {
                return Ok(Route::Unknown(DisplayErrorContext(&e).to_string()))
            }
            Err(e) => return Err(DisplayErrorContext(&e).to_string()),
        };
        for rule in page.rules() {
            let enabled = rule.state().is_some_and(|s| s.as_str() == "ENABLED");
            let matches = rule
                .event_pattern()
                .is_some_and(|p| pattern_matches_source(p, SOURCE));
            let Some(name) = rule.name().filter(|_| enabled && matches) else {
                continue;
            };
            let targets = client
                .list_targets_by_rule()
                .rule(name)
                .event_bus_name(bus)
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())?;
            if !targets.targets().is_empty() {
                return Ok(Route::Found(name.to_owned()));
            }
        }
        match page.next_token() {
            Some(token) => next = Some(token.to_owned()),
            None => return Ok(Route::Missing),
        }
    }
}

fn is_access_denied(code: Option<&str>) -> bool {
    matches!(code, Some("AccessDeniedException" | "AccessDenied"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_routes_jobs_when_its_source_names_them_or_is_open() {
        assert!(pattern_matches_source(r#"{"source":["jobs"]}"#, SOURCE));
        assert!(pattern_matches_source(
            r#"{"source":["other","jobs"],"detail-type":["JobEvent"]}"#,
            SOURCE
        ));
        assert!(pattern_matches_source(
            r#"{"source":[{"prefix":"jo"}]}"#,
            SOURCE
        ));
        assert!(pattern_matches_source(
            r#"{"detail-type":["JobEvent"]}"#,
            SOURCE
        ));
        assert!(!pattern_matches_source(r#"{"source":["orders"]}"#, SOURCE));
        assert!(!pattern_matches_source(
            r#"{"source":[{"prefix":"ord"}]}"#,
            SOURCE
        ));
        assert!(!pattern_matches_source("not json", SOURCE));
    }

    #[test]
    fn only_a_refusal_to_list_leaves_the_route_unknown() {
        assert!(is_access_denied(Some("AccessDeniedException")));
        assert!(!is_access_denied(Some("ResourceNotFoundException")));
        assert!(!is_access_denied(None));
    }
}
