//! `saga`: a job of several steps, run in order, each a known [`Action`] with the
//! compensation that undoes it. Validated here like any kind; the processor runs it
//! through [`crate::processor`]'s saga runner, which keeps each step's effect
//! exactly once and undoes the completed steps in reverse when a step fails for good
//! (see `docs/design.md`, "Sagas").

use super::{pick, Draw, Fields, JobKind, Malformed};
use crate::execute::JobError;
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// The `saga` kind.
#[derive(Debug, Clone, Copy)]
pub struct SagaKind;

/// The most steps one saga may have: each step and compensation is a few calls and
/// a record, so ten of each fit in an invocation's budget (a saga cut short resumes on
/// its next delivery, but each delivery is a receive of the five SQS allows).
pub const MAX_STEPS: usize = 10;

/// A step's action on a (simulated) service, and the compensation that undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateAccount,
    CreateWorkspace,
    ReserveQuota,
    SendWelcome,
}

impl Action {
    /// Every action, in the order a typical onboarding runs them.
    pub const ALL: [Action; 4] = [
        Action::CreateAccount,
        Action::CreateWorkspace,
        Action::ReserveQuota,
        Action::SendWelcome,
    ];

    /// The action's name in a step (`{"action": "create_account"}`).
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateAccount => "create_account",
            Action::CreateWorkspace => "create_workspace",
            Action::ReserveQuota => "reserve_quota",
            Action::SendWelcome => "send_welcome",
        }
    }

    /// The compensation that undoes the action.
    pub fn compensation(self) -> &'static str {
        match self {
            Action::CreateAccount => "delete_account",
            Action::CreateWorkspace => "close_workspace",
            Action::ReserveQuota => "release_quota",
            Action::SendWelcome => "retract_welcome",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A valid `saga` message: whose saga it is, and its steps in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub user_id: String,
    pub steps: Vec<Action>,
}

impl JobKind for SagaKind {
    const NAME: &'static str = "saga";
    type Spec = Saga;

    fn parse(message: &Fields<'_>) -> Result<Saga, Rejection> {
        let user_id = message.text("user_id")?;
        let steps = message
            .array("steps", 1..=MAX_STEPS)?
            .iter()
            .enumerate()
            .map(|(i, step)| parse_step(i, step))
            .collect::<Result<_, _>>()?;
        Ok(Saga { user_id, steps })
    }

    /// The plan, not the work: the processor runs a saga's steps itself, against the
    /// services and the saga's log, which this signature has no access to.
    async fn execute(spec: &Saga, _: Duration, _: DateTime<Utc>) -> Result<Value, JobError> {
        Ok(json!({
            "user_id": spec.user_id,
            "steps": spec.steps.iter().map(|a| a.name()).collect::<Vec<_>>(),
        }))
    }

    /// An onboarding: the actions in their usual order, one to all four of them.
    fn sample(draw: &mut dyn Draw, _: u64) -> Value {
        let len = usize::try_from(draw.between(1, Action::ALL.len() as u64)).unwrap_or(1);
        let steps: Vec<Value> = Action::ALL[..len]
            .iter()
            .map(|a| json!({"action": a.name()}))
            .collect();
        json!({"user_id": draw.between(10_000, 99_999).to_string(), "steps": steps,
               "note": pick(draw, &["new signup", "team invite", "migration"])})
    }

    fn malformed() -> Vec<Malformed> {
        let saga = |message: Value| json!({"job_type": Self::NAME, "message": message});
        vec![
            Malformed::new(
                saga(json!({"user_id": "12345", "steps": []})),
                ErrorCode::OutOfRange,
            ),
            Malformed::new(
                saga(json!({"user_id": "12345", "steps": [{"action": "launch_rocket"}]})),
                ErrorCode::UnknownAction,
            ),
            Malformed::new(
                saga(json!({"user_id": "12345", "steps": "create_account"})),
                ErrorCode::WrongType,
            ),
        ]
    }
}

/// Step `i`: an object naming a known action.
fn parse_step(i: usize, step: &Value) -> Result<Action, Rejection> {
    let path = format!("message.steps[{i}]");
    let Some(obj) = step.as_object() else {
        return Err(Rejection::new(
            ErrorCode::WrongType,
            Some(&path),
            format!(
                "{path} must be an object with an action, got {}",
                super::describe(step)
            ),
        ));
    };
    let path = format!("{path}.action");
    match obj.get("action") {
        None | Some(Value::Null) => Err(Rejection::new(
            ErrorCode::MissingField,
            Some(&path),
            format!("{path} is required for saga"),
        )),
        Some(Value::String(name)) => Action::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            Rejection::new(
                ErrorCode::UnknownAction,
                Some(&path),
                format!(
                    "{path} is {:?}, not one of {}",
                    super::truncate(name),
                    known.join(", ")
                ),
            )
        }),
        Some(other) => Err(Rejection::new(
            ErrorCode::WrongType,
            Some(&path),
            format!("{path} must be a string, got {}", super::describe(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::parse;

    fn rejection(message: Value) -> (ErrorCode, Option<String>) {
        let r = parse(json!({"job_type": "saga", "message": message})).expect_err("rejected");
        (r.code, r.field)
    }

    #[test]
    fn a_saga_is_its_steps_in_order() {
        let job = parse(
            json!({"job_type": "saga", "message": {"user_id": "7", "steps": [
            {"action": "create_account"}, {"action": "send_welcome"}]}}),
        )
        .expect("valid");
        let saga = job.spec.get::<Saga>().expect("a saga");
        assert_eq!(saga.steps, [Action::CreateAccount, Action::SendWelcome]);
    }

    #[test]
    fn each_bad_step_is_named_by_its_index() {
        let cases = [
            (
                json!({"user_id": "7"}),
                ErrorCode::MissingField,
                "message.steps",
            ),
            (
                json!({"user_id": "7", "steps": {}}),
                ErrorCode::WrongType,
                "message.steps",
            ),
            (
                json!({"user_id": "7", "steps": []}),
                ErrorCode::OutOfRange,
                "message.steps",
            ),
            (
                json!({"user_id": "7", "steps": vec![json!({"action": "create_account"}); 11]}),
                ErrorCode::OutOfRange,
                "message.steps",
            ),
            (
                json!({"user_id": "7", "steps": [{"action": "create_account"}, "send_welcome"]}),
                ErrorCode::WrongType,
                "message.steps[1]",
            ),
            (
                json!({"user_id": "7", "steps": [{"action": "create_account"}, {}]}),
                ErrorCode::MissingField,
                "message.steps[1].action",
            ),
            (
                json!({"user_id": "7", "steps": [{"action": "Create_Account"}]}),
                ErrorCode::UnknownAction,
                "message.steps[0].action",
            ),
            (
                json!({"user_id": "7", "steps": [{"action": 3}]}),
                ErrorCode::WrongType,
                "message.steps[0].action",
            ),
        ];
        for (message, code, field) in cases {
            assert_eq!(
                rejection(message.clone()),
                (code, Some(field.into())),
                "{message}"
            );
        }
    }

    #[test]
    fn every_action_has_its_own_compensation() {
        let names: std::collections::HashSet<_> = Action::ALL
            .iter()
            .flat_map(|a| [a.name(), a.compensation()])
            .collect();
        assert_eq!(names.len(), 2 * Action::ALL.len());
        assert!(Action::ALL
            .iter()
            .all(|a| Action::parse(a.name()) == Some(*a)));
    }
}
