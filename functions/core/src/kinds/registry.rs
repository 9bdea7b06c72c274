//! The registry: the kinds a pipeline knows, looked up by `job_type`, and each kind
//! behind one object-safe trait ([`Kind`]) whatever its spec's type.

use super::{
    DataCleanup, Draw, Fields, JobKind, LongRunningJob, Malformed, ReportGeneration, SagaKind,
    UserOnboarding,
};
use crate::execute::JobError;
use crate::job::Rejection;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The kinds the pipeline knows, in the order the generator's catalogue lists them.
pub static BUILTIN: [&dyn Kind; 5] = [
    &ReportGeneration,
    &DataCleanup,
    &UserOnboarding,
    &LongRunningJob,
    &SagaKind,
];

/// A [`JobKind`] as the registry holds it. Implemented for every `JobKind`.
pub trait Kind: Send + Sync {
    /// The kind's `job_type`.
    fn name(&self) -> &'static str;
    /// Validates a job's `message` into its spec.
    fn parse(&self, message: &Fields<'_>) -> Result<Spec, Rejection>;
    /// A valid `message` for the generator ([`JobKind::sample`]).
    fn sample(&self, draw: &mut dyn Draw, max_secs: u64) -> Value;
    /// The kind's malformed details ([`JobKind::malformed`]).
    fn malformed(&self) -> Vec<Malformed>;
}

impl<K: JobKind> Kind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn parse(&self, message: &Fields<'_>) -> Result<Spec, Rejection> {
        Ok(Spec(Box::new(Typed::<K>(K::parse(message)?))))
    }

    fn sample(&self, draw: &mut dyn Draw, max_secs: u64) -> Value {
        K::sample(draw, max_secs)
    }

    fn malformed(&self) -> Vec<Malformed> {
        K::malformed()
    }
}

/// A validated job of some kind, ready to run.
#[derive(Debug)]
pub struct Spec(Box<dyn Runnable>);

impl Spec {
    /// The `job_type` of the job's kind.
    pub fn job_type(&self) -> &'static str {
        self.0.job_type()
    }

    /// The kind's own spec, when it is a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// Refuses a job asking for more than `max_secs` of work ([`JobKind::admit`]).
    pub fn admit(&self, max_secs: u64) -> Result<(), Rejection> {
        self.0.admit(max_secs)
    }

    /// Runs the job ([`JobKind::execute`]).
    pub async fn execute(&self, budget: Duration, now: DateTime<Utc>) -> Result<Value, JobError> {
        self.0.execute(budget, now).await
    }
}

/// A kind's spec with the kind's behaviour, its type erased.
trait Runnable: fmt::Debug + Send + Sync {
    fn job_type(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn admit(&self, max_secs: u64) -> Result<(), Rejection>;
    fn execute(
        &self,
        budget: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Value, JobError>>;
}

struct Typed<K: JobKind>(K::Spec);

impl<K: JobKind> fmt::Debug for Typed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<K: JobKind> Runnable for Typed<K> {
    fn job_type(&self) -> &'static str {
        K::NAME
    }

    fn as_any(&self) -> &dyn Any {
        &self.0
    }

    fn admit(&self, max_secs: u64) -> Result<(), Rejection> {
        K::admit(&self.0, max_secs)
    }

    fn execute(
        &self,
        budget: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Value, JobError>> {
        Box::pin(K::execute(&self.0, budget, now))
    }
}

/// The kinds one pipeline knows. Cheap to clone; [`Registry::builtin`] by default.
#[derive(Clone)]
pub struct Registry {
    kinds: Cow<'static, [&'static dyn Kind]>,
}

impl Registry {
    /// The kinds in [`BUILTIN`].
    pub fn builtin() -> Registry {
        Registry {
            kinds: Cow::Borrowed(&BUILTIN),
        }
    }

    /// A registry of exactly `kinds` (the first of two with one name wins).
    pub fn of(kinds: Vec<&'static dyn Kind>) -> Registry {
        Registry {
            kinds: Cow::Owned(kinds),
        }
    }

    /// The kind named `job_type` (case-sensitive).
    pub fn get(&self, job_type: &str) -> Option<&'static dyn Kind> {
        self.kinds.iter().copied().find(|k| k.name() == job_type)
    }

    /// These kinds but the one named `job_type`.
    pub fn without(&self, job_type: &str) -> Registry {
        Registry::of(
            self.kinds
                .iter()
                .copied()
                .filter(|k| k.name() != job_type)
                .collect(),
        )
    }

    /// Every kind's `job_type`, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.name())
    }

    /// A valid job detail for the generator, of a kind drawn at random (`None` when
    /// the registry is empty).
    pub fn sample(&self, draw: &mut dyn Draw, max_secs: u64) -> Option<Value> {
        let last = self.kinds.len().checked_sub(1)?;
        let i = usize::try_from(draw.between(0, last as u64)).unwrap_or(last);
        let kind = self.kinds.get(i)?;
        Some(json!({"job_type": kind.name(), "message": kind.sample(draw, max_secs)}))
    }

    /// A malformed job detail for the generator, drawn from every kind's and those
    /// any registry refuses ([`crate::job::malformed_details`]).
    pub fn sample_malformed(&self, draw: &mut dyn Draw) -> Malformed {
        let mut all: Vec<Malformed> = self.kinds.iter().flat_map(|k| k.malformed()).collect();
        all.extend(crate::job::malformed_details());
        let i = draw.between(0, all.len().saturating_sub(1) as u64);
        all.swap_remove(usize::try_from(i).unwrap_or_default())
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
