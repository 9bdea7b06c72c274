//! `user_onboarding`: welcomes a new user and derives their username from their name.

use super::{pick, Draw, Fields, JobKind, Malformed};
use crate::execute::JobError;
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// The `user_onboarding` kind.
#[derive(Debug, Clone, Copy)]
pub struct UserOnboarding;

/// A valid `user_onboarding` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onboarding {
    pub user_id: String,
    pub user_name: String,
}

const NAMES: &[&str] = &[
    "John Doe",
    "Ada Lovelace",
    "Grace Hopper",
    "Linus Torvalds",
    "Margaret Hamilton",
];

impl JobKind for UserOnboarding {
    const NAME: &'static str = "user_onboarding";
    type Spec = Onboarding;

    fn parse(message: &Fields<'_>) -> Result<Onboarding, Rejection> {
        Ok(Onboarding {
            user_id: message.text("user_id")?,
            user_name: message.text("user_name")?,
        })
    }

    async fn execute(spec: &Onboarding, _: Duration, _: DateTime<Utc>) -> Result<Value, JobError> {
        Ok(json!({
            "user_id": spec.user_id,
            "username": slug(&spec.user_name),
            "welcome": format!("Welcome, {}!", spec.user_name.trim()),
        }))
    }

    fn sample(draw: &mut dyn Draw, _: u64) -> Value {
        json!({"user_id": draw.between(10_000, 99_999).to_string(),
               "user_name": pick(draw, NAMES)})
    }

    fn malformed() -> Vec<Malformed> {
        vec![
            Malformed::new(
                json!({"job_type": Self::NAME, "message": {"user_id": "12345", "user_name": ""}}),
                ErrorCode::EmptyString,
            ),
            Malformed::new(json!({"job_type": Self::NAME}), ErrorCode::MissingField),
            Malformed::new(
                json!({"job_type": Self::NAME, "message": null}),
                ErrorCode::MissingField,
            ),
        ]
    }
}

/// ` John  Doe ` → `john.doe`.
fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('.') && !out.is_empty() {
            out.push('.');
        }
    }
    out.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::{now, parse};

    #[tokio::test]
    async fn onboarding_slugs_the_name() {
        let spec = Onboarding {
            user_id: "1".into(),
            user_name: " John  Doe ".into(),
        };
        let r = UserOnboarding::execute(&spec, Duration::ZERO, now())
            .await
            .expect("runs");
        assert_eq!(r["username"], "john.doe");
    }

    #[test]
    fn a_blank_name_is_an_empty_string() {
        let r =
            parse(json!({"job_type":"user_onboarding","message":{"user_id":"1","user_name":"  "}}))
                .expect_err("rejected");
        assert_eq!(
            (r.code, r.field.as_deref()),
            (ErrorCode::EmptyString, Some("message.user_name"))
        );
    }
}
