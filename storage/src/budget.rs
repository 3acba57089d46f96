//! Bytes of replies a client may have asked for but not yet read.
//!
//! The engine debits what it returns to a connection; the connection credits
//! what it has written to its socket. A request may return at most what is
//! left of both its connection's budget and the budget all connections
//! share, so a client that pipelines large reads without reading the
//! replies holds a bounded amount of memory, however many it sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// One connection's share of the reply budget.
#[derive(Debug)]
pub struct ReplyBudget {
    connection: AtomicI64,
    shared: Arc<AtomicI64>,
    /// Debited and not yet credited back.
    outstanding: AtomicI64,
}

impl ReplyBudget {
    /// A budget of `per_connection` bytes drawn from `shared`, which every
    /// connection's budget refers to (see [`ReplyBudget::shared`]).
    pub fn new(per_connection: usize, shared: Arc<AtomicI64>) -> ReplyBudget {
        ReplyBudget { connection: AtomicI64::new(clamp(per_connection)), shared, outstanding: AtomicI64::new(0) }
    }

    /// The pool all connections draw from.
    pub fn shared(total: usize) -> Arc<AtomicI64> {
        Arc::new(AtomicI64::new(clamp(total)))
    }

    /// Bytes a request may return now.
    pub fn available(&self) -> usize {
        let left = self.connection.load(Ordering::Acquire).min(self.shared.load(Ordering::Acquire));
        usize::try_from(left).unwrap_or(0)
    }

    /// The engine returned `bytes`.
    pub fn debit(&self, bytes: usize) {
        let n = clamp(bytes);
        self.connection.fetch_sub(n, Ordering::AcqRel);
        self.shared.fetch_sub(n, Ordering::AcqRel);
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    /// The connection wrote `bytes` to its socket: that much of what was
    /// debited is free again (never more than was debited).
    pub fn credit(&self, bytes: usize) {
        let mut n = clamp(bytes);
        let taken = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(o - n.min(o)));
        n = n.min(taken.unwrap_or(0));
        if n > 0 {
            self.connection.fetch_add(n, Ordering::AcqRel);
            self.shared.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Bytes debited and not yet written.
    pub fn outstanding(&self) -> usize {
        usize::try_from(self.outstanding.load(Ordering::Acquire)).unwrap_or(0)
    }
}

impl Drop for ReplyBudget {
    /// A closed connection's unsent replies are gone: their bytes return to
    /// the shared pool.
    fn drop(&mut self) {
        let n = self.outstanding.swap(0, Ordering::AcqRel);
        self.shared.fetch_add(n, Ordering::AcqRel);
    }
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debits_and_credits_balance_across_connections() {
        let shared = ReplyBudget::shared(100);
        let a = ReplyBudget::new(60, shared.clone());
        let b = ReplyBudget::new(60, shared.clone());
        assert_eq!(a.available(), 60);
        a.debit(50);
        assert_eq!(a.available(), 10);
        assert_eq!(b.available(), 50, "the shared pool is what is left");
        a.credit(1000);
        assert_eq!(a.available(), 60, "credit never exceeds what was debited");
        b.debit(40);
        drop(b);
        assert_eq!(a.available(), 60);
        assert_eq!(shared.load(Ordering::Acquire), 100, "a dropped connection returns its bytes");
    }
}
