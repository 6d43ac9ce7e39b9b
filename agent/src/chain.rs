//! An error's chain of causes, for messages that name the root cause (`error trying to connect:
//! Connection refused`) and for matching on it.

use std::error::Error;

/// `e` and its causes, outermost first.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e| (*e).source())
}

/// `e` with every cause, joined by `": "` (`error trying to connect: Connection refused`).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    causes(e)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_runs_outermost_first() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        assert_eq!(causes(&e).last().unwrap().to_string(), "inner");
    }
}
