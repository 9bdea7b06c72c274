//! A seed is its schedule: the same seed twice gives the same trace and the same
//! verdict, and other seeds give other schedules.

#[test]
fn a_seed_replays_its_schedule_exactly() {
    let options = sim::Options {
        jobs: 15,
        ..sim::Options::default()
    };
    let first = sim::run(11, &options);
    let again = sim::run(11, &options);
    assert!(first.trace.len() > 50, "a schedule that did something");
    assert_eq!(first.trace, again.trace);
    assert_eq!(first.violations, again.violations);
    assert_ne!(sim::run(12, &options).trace, first.trace);
}
