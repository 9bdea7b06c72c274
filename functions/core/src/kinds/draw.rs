//! Randomness for sample jobs, so the kinds need no random-number crate: the
//! generator draws from its own seeded generator through [`Draw`].

/// A source of uniform random numbers.
pub trait Draw {
    /// A number in `low..=high`, each equally likely (`low` when `high < low`).
    fn between(&mut self, low: u64, high: u64) -> u64;
}

/// One of `from`, each equally likely (`""` when `from` is empty).
pub fn pick<'s>(draw: &mut dyn Draw, from: &[&'s str]) -> &'s str {
    let Some(last) = from.len().checked_sub(1) else {
        return "";
    };
    let i = draw.between(0, last as u64);
    from.get(usize::try_from(i).unwrap_or(last))
        .copied()
        .unwrap_or_default()
}
