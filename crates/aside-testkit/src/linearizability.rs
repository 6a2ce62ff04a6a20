//! A linearizability checker for one register (one key): given the
//! operations of a history with their call and return times, is there a
//! total order of them, consistent with real time (an operation that
//! returned before another was called comes first), in which every read
//! returns the value of the last write before it?
//!
//! Owns the search and nothing else: the Wing & Gong search with Lowe's
//! memoisation of visited (linearized set, register value) states. At each
//! step the candidates are the operations not yet placed that were called
//! before every other unplaced operation returned; a read is placed only if
//! it returns the register's current value. Exponential in the worst case,
//! fast on the histories of tests (a few keys, tens to hundreds of
//! operations each, a handful at a time), which is what it is for.

use std::collections::HashSet;

/// What an operation did to the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Set the register (`None`: the row was deleted).
    Write(Option<u64>),
    /// Returned this value.
    Read(Option<u64>),
}

/// One completed operation: called at `call`, returned at `ret` (any
/// monotonic clock shared by all processes, `call < ret`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// When it was called.
    pub call: u64,
    /// When it returned.
    pub ret: u64,
    /// What it did.
    pub access: Access,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// The most operations any order could place before getting stuck.
    pub placed: usize,
    /// The operations of the history, in call order.
    pub operations: Vec<Operation>,
}

impl std::fmt::Display for NotLinearizable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not linearizable: at most {} of {} operations can be ordered; the history:",
            self.placed,
            self.operations.len()
        )?;
        for op in &self.operations {
            write!(f, "\n  [{}, {}] {:?}", op.call, op.ret, op.access)?;
        }
        Ok(())
    }
}

/// Checks one register's history, starting from `initial`.
///
/// # Errors
/// [`NotLinearizable`] when no order of the operations is both consistent
/// with real time and a register's.
pub fn check(initial: Option<u64>, operations: &[Operation]) -> Result<(), NotLinearizable> {
    let mut ops = operations.to_vec();
    ops.sort_by_key(|o| (o.call, o.ret));
    let mut search = Search {
        ops: &ops,
        placed: vec![false; ops.len()],
        dead: HashSet::new(),
        deepest: 0,
    };
    if search.extend(initial, 0) {
        Ok(())
    } else {
        Err(NotLinearizable {
            placed: search.deepest,
            operations: ops,
        })
    }
}

struct Search<'a> {
    ops: &'a [Operation],
    placed: Vec<bool>,
    /// States from which no order completes: (placed set, register value).
    dead: HashSet<(Vec<bool>, Option<u64>)>,
    deepest: usize,
}

impl Search<'_> {
    fn extend(&mut self, value: Option<u64>, depth: usize) -> bool {
        self.deepest = self.deepest.max(depth);
        if depth == self.ops.len() {
            return true;
        }
        if self.dead.contains(&(self.placed.clone(), value)) {
            return false;
        }
        // An operation can come next only if it was called before every
        // unplaced operation returned.
        let first_return = self
            .ops
            .iter()
            .zip(&self.placed)
            .filter(|(_, placed)| !**placed)
            .map(|(o, _)| o.ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if self.placed[i] || op.call > first_return {
                continue;
            }
            let next = match op.access {
                Access::Write(w) => w,
                Access::Read(r) if r == value => value,
                Access::Read(_) => continue,
            };
            self.placed[i] = true;
            let done = self.extend(next, depth + 1);
            self.placed[i] = false;
            if done {
                return true;
            }
        }
        self.dead.insert((self.placed.clone(), value));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: u64, access: Access) -> Operation {
        Operation { call, ret, access }
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let h = [
            op(1, 2, Access::Write(Some(1))),
            op(3, 4, Access::Read(Some(1))),
            op(5, 6, Access::Write(Some(2))),
            op(7, 8, Access::Read(Some(2))),
        ];
        assert_eq!(check(Some(0), &h), Ok(()));
    }

    #[test]
    fn a_read_overlapping_a_write_may_return_either_value() {
        for seen in [Some(0), Some(1)] {
            let h = [op(1, 10, Access::Write(Some(1))), op(2, 3, Access::Read(seen))];
            assert_eq!(check(Some(0), &h), Ok(()), "{seen:?}");
        }
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_not() {
        let h = [op(1, 2, Access::Write(Some(1))), op(3, 4, Access::Read(Some(0)))];
        assert!(check(Some(0), &h).is_err());
    }

    #[test]
    fn new_then_old_during_one_write_is_not() {
        // Both reads overlap the write, but the second began after the
        // first returned the new value: it cannot return the old one.
        let h = [
            op(1, 20, Access::Write(Some(1))),
            op(2, 3, Access::Read(Some(1))),
            op(4, 5, Access::Read(Some(0))),
        ];
        let err = check(Some(0), &h).unwrap_err();
        assert_eq!(err.operations.len(), 3);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_not() {
        let h = [op(1, 2, Access::Read(Some(7)))];
        assert!(check(Some(0), &h).is_err());
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [
            op(1, 10, Access::Write(Some(1))),
            op(2, 11, Access::Write(Some(2))),
            op(12, 13, Access::Read(Some(1))),
        ];
        assert_eq!(check(Some(0), &h), Ok(()));
    }
}
