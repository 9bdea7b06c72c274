//! `report_generation`: builds a named report under a set of filters. The report is
//! simulated: its row count and checksum are a digest of its name and filters.

use super::{pick, Draw, Fields, JobKind, Malformed};
use crate::execute::{fnv1a, JobError};
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The `report_generation` kind.
#[derive(Debug, Clone, Copy)]
pub struct ReportGeneration;

/// A valid `report_generation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub report_name: String,
    pub filters: String,
}

const REPORTS: &[&str] = &[
    "Sales Report",
    "Inventory Summary",
    "Churn Analysis",
    "Quarterly Revenue",
    "Ops Daily",
];
const FILTERS: &[&str] = &[
    "region=US",
    "region=EU, tier=gold",
    "year=2026; quarter=Q3",
    "channel=web",
    "vip",
];

impl JobKind for ReportGeneration {
    const NAME: &'static str = "report_generation";
    type Spec = Report;

    fn parse(message: &Fields<'_>) -> Result<Report, Rejection> {
        Ok(Report {
            report_name: message.text("report_name")?,
            filters: message.text("filters")?,
        })
    }

    async fn execute(spec: &Report, _: Duration, _: DateTime<Utc>) -> Result<Value, JobError> {
        let parsed: Map<String, Value> = parse_filters(&spec.filters);
        let digest = fnv1a(&[spec.report_name.as_bytes(), b"\0", spec.filters.as_bytes()]);
        Ok(json!({
            "report": spec.report_name,
            "filters": parsed,
            "rows": digest % 10_000,
            "checksum": format!("{digest:016x}"),
        }))
    }

    fn sample(draw: &mut dyn Draw, _: u64) -> Value {
        json!({"report_name": pick(draw, REPORTS), "filters": pick(draw, FILTERS)})
    }

    /// The original demo's bad job: a report sent with a cleanup's fields.
    fn malformed() -> Vec<Malformed> {
        vec![Malformed::new(
            json!({"job_type": Self::NAME,
                   "message": {"target_table": "Sales Report", "filters": "region=US"}}),
            ErrorCode::MissingField,
        )]
    }
}

/// `region=US, tier=gold` → `{"region":"US","tier":"gold"}`; a term without `=`
/// becomes a flag set to `true`.
fn parse_filters(filters: &str) -> Map<String, Value> {
    filters
        .split([',', ';', '&'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| match term.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Value::String(v.trim().to_owned())),
            None => (term.to_owned(), Value::Bool(true)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::{now, parse};

    #[tokio::test]
    async fn report_is_deterministic() {
        let spec = Report {
            report_name: "Sales".into(),
            filters: "region=US; vip".into(),
        };
        let run = || ReportGeneration::execute(&spec, Duration::from_secs(1), now());
        let a = run().await.expect("runs");
        let b = run().await.expect("runs");
        assert_eq!(a, b);
        assert_eq!(a["filters"], json!({"region":"US","vip":true}));
    }

    #[test]
    fn reasons_name_the_field() {
        let r = parse(json!({"job_type":"report_generation","message":{"filters":"x"}}))
            .expect_err("rejected");
        assert_eq!(r.code, ErrorCode::MissingField);
        assert_eq!(
            r.message,
            "message.report_name is required for report_generation"
        );
    }
}
