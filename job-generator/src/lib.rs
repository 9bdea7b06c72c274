//! What the `job-generator` binary shares with the simulator (`sim`): the catalogue
//! of realistic jobs and the dead-letter operations, so a simulation drives the very
//! code an operator runs.

pub mod catalog;
pub mod dlq;
