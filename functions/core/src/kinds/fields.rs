//! Field access on a job's `message`, producing rejections that name `message.<field>`.

use crate::job::Rejection;
use crate::messages::ErrorCode;
use serde_json::{Map, Value};

/// A job's `message`, read field by field by its kind's [`super::JobKind::parse`].
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    job_type: &'a str,
    message: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(job_type: &'a str, message: &'a Map<String, Value>) -> Self {
        Fields { job_type, message }
    }

    /// A non-empty string (one of only spaces is empty).
    pub fn text(&self, name: &str) -> Result<String, Rejection> {
        let path = format!("message.{name}");
        match self.message.get(name) {
            None | Some(Value::Null) => Err(self.missing(&path)),
            Some(Value::String(s)) if s.trim().is_empty() => Err(Rejection::new(
                ErrorCode::EmptyString,
                Some(&path),
                format!("{path} must not be empty"),
            )),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Rejection::new(
                ErrorCode::WrongType,
                Some(&path),
                format!("{path} must be a string, got {}", describe(other)),
            )),
        }
    }

    /// An integer greater than 0 (`30.0` is not an integer).
    pub fn positive_int(&self, name: &str) -> Result<u64, Rejection> {
        let path = format!("message.{name}");
        let wrong_type = |v: &Value| {
            Rejection::new(
                ErrorCode::WrongType,
                Some(&path),
                format!(
                    "{path} must be an integer greater than 0, got {}",
                    describe(v)
                ),
            )
        };
        let out_of_range = |n: &dyn std::fmt::Display| {
            Rejection::new(
                ErrorCode::OutOfRange,
                Some(&path),
                format!("{path} must be greater than 0, got {n}"),
            )
        };
        match self.message.get(name) {
            None | Some(Value::Null) => Err(self.missing(&path)),
            Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(0), _) => Err(out_of_range(&0)),
                (Some(u), _) => Ok(u),
                (None, Some(_)) => Err(out_of_range(n)),
                (None, None) => Err(wrong_type(v)),
            },
            Some(other) => Err(wrong_type(other)),
        }
    }

    /// An array whose length is in `len`.
    pub fn array(
        &self,
        name: &str,
        len: std::ops::RangeInclusive<usize>,
    ) -> Result<&'a Vec<Value>, Rejection> {
        let path = format!("message.{name}");
        match self.message.get(name) {
            None | Some(Value::Null) => Err(self.missing(&path)),
            Some(Value::Array(items)) if len.contains(&items.len()) => Ok(items),
            Some(Value::Array(items)) => Err(Rejection::new(
                ErrorCode::OutOfRange,
                Some(&path),
                format!(
                    "{path} must have {} to {} items, got {}",
                    len.start(),
                    len.end(),
                    items.len()
                ),
            )),
            Some(other) => Err(Rejection::new(
                ErrorCode::WrongType,
                Some(&path),
                format!("{path} must be an array, got {}", describe(other)),
            )),
        }
    }

    fn missing(&self, path: &str) -> Rejection {
        Rejection::new(
            ErrorCode::MissingField,
            Some(path),
            format!("{path} is required for {}", self.job_type),
        )
    }
}

/// A short description of a JSON value for error messages: its type and, for
/// scalars, the value itself (long strings are cut).
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("the non-integer number {n}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// `s`, cut to 40 characters and an ellipsis when longer.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}
