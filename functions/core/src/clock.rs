//! The time the handlers read when they stamp what they write.
//!
//! On Lambda this is the wall clock. A simulation runs the handlers in virtual time
//! (tokio's paused clock, so a 15-minute lease costs nothing), and every timestamp a
//! handler writes must come from that time too: a lease compared with a wall-clock
//! `now` while the leases were set in virtual time would decide claims wrongly. So no
//! handler calls `Utc::now()` itself; each calls [`now`], which a simulation points at
//! its virtual clock for the thread it runs on ([`run_virtual`]).

use crate::Timestamp;
use std::cell::Cell;

thread_local! {
    /// The virtual epoch of this thread: the timestamp that stood at the tokio instant.
    static VIRTUAL: Cell<Option<(Timestamp, tokio::time::Instant)>> = const { Cell::new(None) };
}

/// The current time: the wall clock, or the virtual clock of a simulation.
pub fn now() -> Timestamp {
    match VIRTUAL.with(Cell::get) {
        None => chrono::Utc::now(),
        Some((at, instant)) => {
            let passed = tokio::time::Instant::now().saturating_duration_since(instant);
            at + chrono::TimeDelta::from_std(passed).unwrap_or(chrono::TimeDelta::MAX)
        }
    }
}

/// From now on, on this thread, [`now`] is `at` plus the tokio time passed since this
/// call (paused time in a simulation); `None` goes back to the wall clock.
pub fn run_virtual(at: Option<Timestamp>) {
    VIRTUAL.with(|v| v.set(at.map(|at| (at, tokio::time::Instant::now()))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_time_moves_with_tokio_time_and_wall_time_comes_back() {
        let at = Timestamp::from_timestamp(1_800_000_000, 0).expect("a time");
        run_virtual(Some(at));
        tokio::time::sleep(std::time::Duration::from_secs(900)).await;
        assert_eq!(now(), at + chrono::TimeDelta::seconds(900));
        run_virtual(None);
        assert!(now() > at - chrono::TimeDelta::days(3650) && now() != at);
    }
}
