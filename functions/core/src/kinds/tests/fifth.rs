//! `word_count`: a fifth kind, written here as a new kind would be written beside the
//! built-in ones, and known only to the registries the tests build with it.

use crate::execute::JobError;
use crate::job::Rejection;
use crate::kinds::{pick, Draw, Fields, JobKind, Malformed};
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// The `word_count` kind: counts the words of a text, and the most frequent of them.
#[derive(Debug, Clone, Copy)]
pub struct WordCount;

/// A valid `word_count` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub text: String,
    /// `message.top`: how many of the most frequent words to list.
    pub top: u64,
}

const TEXTS: &[&str] = &["the cat sat on the mat", "to be or not to be"];

/// The words of `text`, most frequent first: traced as a kind's own code would be,
/// its span a child of the job's `execute word_count`.
#[tracing::instrument(skip(text), fields(chars = text.len()))]
fn tally(text: &str) -> Vec<(&str, u64)> {
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
}

impl JobKind for WordCount {
    const NAME: &'static str = "word_count";
    type Spec = Count;

    fn parse(message: &Fields<'_>) -> Result<Count, Rejection> {
        Ok(Count {
            text: message.text("text")?,
            top: message.positive_int("top")?,
        })
    }

    async fn execute(spec: &Count, _: Duration, _: DateTime<Utc>) -> Result<Value, JobError> {
        let mut ranked = tally(&spec.text);
        ranked.truncate(usize::try_from(spec.top).unwrap_or(usize::MAX));
        let words = spec.text.split_whitespace().count();
        Ok(json!({"words": words, "top": ranked.into_iter().map(|(w, _)| w).collect::<Vec<_>>()}))
    }

    fn sample(draw: &mut dyn Draw, _: u64) -> Value {
        json!({"text": pick(draw, TEXTS), "top": draw.between(1, 3)})
    }

    fn malformed() -> Vec<Malformed> {
        vec![Malformed::new(
            json!({"job_type": Self::NAME, "message": {"text": "a b", "top": "2"}}),
            ErrorCode::WrongType,
        )]
    }
}
