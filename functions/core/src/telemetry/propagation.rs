//! Trace context on the wire: W3C `traceparent`/`tracestate` in a job's detail and
//! in SQS message attributes, and the X-Ray `AWSTraceHeader` system attribute that
//! AWS adds to SQS messages sent from traced services.

use crate::messages::TraceContext;
use aws_lambda_events::sqs::SqsMessage;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::Value;
use std::collections::HashMap;

/// The context a W3C `traceparent` (and optional `tracestate`) names, if valid.
pub fn from_w3c(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The context of a [`TraceContext`] carried in a message body, if valid.
pub fn from_trace_context(tc: &TraceContext) -> Option<Context> {
    from_w3c(&tc.traceparent, tc.tracestate.as_deref())
}

/// The W3C headers for a context's span; `None` when it has no valid span.
pub fn to_trace_context(cx: &Context) -> Option<TraceContext> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// The context an X-Ray header such as
/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1` names.
/// Without a `Parent` there is no span to continue, so `None`.
pub fn from_xray(header: &str) -> Option<Context> {
    let mut trace_id = None;
    let mut span_id = None;
    let mut sampled = false;
    for part in header.split(';') {
        match part.trim().split_once('=') {
            Some(("Root", root)) => {
                let mut pieces = root.split('-');
                let (Some("1"), Some(time), Some(rest), None) =
                    (pieces.next(), pieces.next(), pieces.next(), pieces.next())
                else {
                    return None;
                };
                if time.len() != 8 || rest.len() != 24 {
                    return None;
                }
                trace_id = TraceId::from_hex(&format!("{time}{rest}")).ok();
            }
            Some(("Parent", parent)) if parent.len() == 16 => {
                span_id = SpanId::from_hex(parent).ok();
            }
            Some(("Sampled", s)) => sampled = s == "1",
            _ => {}
        }
    }
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(trace_id?, span_id?, flags, true, TraceState::default());
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
}

/// The top-level fields of a job detail that [`detail_trace_context`] reads: transport,
/// not the job's content, so the job's fingerprint leaves them out.
pub const DETAIL_FIELDS: [&str; 3] = ["trace_context", "traceparent", "tracestate"];

/// Whether `s` is a W3C `traceparent` of version `00`: `00-<trace id>-<parent id>-<flags>`
/// with 32, 16 and 2 lowercase hex digits, neither id all zeros. Nothing else is
/// passed on (as a message attribute, or in a message), whatever a sender wrote.
pub fn valid_traceparent(s: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let not_zero = |part: &str| part.bytes().any(|b| b != b'0');
    let mut parts = s.split('-');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("00"), Some(trace), Some(parent), Some(flags), None) => {
            hex(trace, 32)
                && not_zero(trace)
                && hex(parent, 16)
                && not_zero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// Whether a `tracestate` is worth carrying on: at most 512 characters (the W3C limit
/// for propagating it), all printable ASCII.
fn valid_tracestate(s: &str) -> bool {
    s.len() <= 512 && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Trace context a sender put in a job detail: `trace_context.traceparent` (the
/// shape of [`TraceContext`]) or a top-level `traceparent` ([`DETAIL_FIELDS`]), if it
/// is a [`valid_traceparent`]; an invalid one is dropped (the job runs on a new trace,
/// or none), and so is a `tracestate` that is not [`valid_tracestate`].
pub fn detail_trace_context(detail: &Value) -> Option<TraceContext> {
    let read = |holder: Option<&Value>| {
        let holder = holder?;
        let traceparent = holder.get("traceparent")?.as_str()?;
        valid_traceparent(traceparent).then(|| TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: holder
                .get("tracestate")
                .and_then(Value::as_str)
                .filter(|s| valid_tracestate(s))
                .map(str::to_owned),
        })
    };
    read(detail.get("trace_context")).or_else(|| read(Some(detail)))
}

/// The context an SQS record carries as transport metadata: the `traceparent`
/// message attribute, else the `AWSTraceHeader` system attribute.
pub fn from_record(record: &SqsMessage) -> Option<Context> {
    let attr = |name: &str| record.message_attributes.get(name)?.string_value.as_deref();
    attr("traceparent")
        .and_then(|tp| from_w3c(tp, attr("tracestate")))
        .or_else(|| from_xray(record.attributes.get("AWSTraceHeader")?))
}

/// The trace id of a context's span, as 32 hex digits, for log lines.
pub fn trace_id_of(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_round_trips() {
        let cx = from_w3c(TP, Some("vendor=x")).expect("valid");
        let tc = to_trace_context(&cx).expect("injects");
        assert_eq!(tc.traceparent, TP);
        assert_eq!(tc.tracestate.as_deref(), Some("vendor=x"));
        assert_eq!(
            trace_id_of(&cx).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(from_w3c("00-garbage", None).is_none());
        assert!(to_trace_context(&Context::new()).is_none());
    }

    #[test]
    fn xray_header_becomes_a_parent() {
        let cx =
            from_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
                .expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(sc.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(from_xray("Root=1-5759e988-bd862e3fe1be46a994272793").is_none());
        assert!(from_xray("Root=2-x-y;Parent=53995c3f42cd8ad8").is_none());
    }

    #[test]
    fn only_a_well_formed_version_00_traceparent_is_valid() {
        assert!(valid_traceparent(TP));
        for bad in [
            "",
            "00-garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{ffff}",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
        let kept = detail_trace_context(&json!({"traceparent": TP, "tracestate": "a=\u{7}"}))
            .expect("valid");
        assert_eq!(
            kept.tracestate, None,
            "an unprintable tracestate is dropped"
        );
        assert_eq!(
            detail_trace_context(
                &json!({"trace_context": {"traceparent": "x"}, "traceparent": TP})
            )
            .map(|tc| tc.traceparent),
            Some(TP.to_owned()),
            "a valid top-level one is used when the nested one is not"
        );
    }

    #[test]
    fn details_carry_context_in_either_shape() {
        let nested = json!({"job_type": "x", "trace_context": {"traceparent": TP}});
        let flat = json!({"job_type": "x", "traceparent": TP, "tracestate": "a=b"});
        assert_eq!(
            detail_trace_context(&nested).expect("nested").traceparent,
            TP
        );
        let flat = detail_trace_context(&flat).expect("flat");
        assert_eq!(
            (flat.traceparent.as_str(), flat.tracestate.as_deref()),
            (TP, Some("a=b"))
        );
        assert_eq!(detail_trace_context(&json!("text")), None);
    }

    #[test]
    fn records_prefer_traceparent_over_the_xray_header() {
        let record: SqsMessage = serde_json::from_value(json!({
            "messageId": "m",
            "attributes": {"AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"},
            "messageAttributes": {"traceparent": {"stringValue": TP, "dataType": "String"}}
        }))
        .expect("record");
        let cx = from_record(&record).expect("context");
        assert_eq!(
            trace_id_of(&cx).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut xray_only = record.clone();
        xray_only.message_attributes.clear();
        let cx = from_record(&xray_only).expect("context");
        assert_eq!(
            trace_id_of(&cx).as_deref(),
            Some("5759e988bd862e3fe1be46a994272793")
        );
    }
}
