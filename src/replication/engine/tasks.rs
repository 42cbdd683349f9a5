//! Storage task ids.

use super::{TaskId, task::Reply};
use crate::crypto::CoreKey;

/// The ids of storage tasks: each new one gets the next.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    next: TaskId,
}

impl Tasks {
    /// A new task on `core`: the reply its result comes back with (to the core's sync part,
    /// or to the serving part for a proof it reads).
    pub(super) fn start<T>(&mut self, core: CoreKey) -> Reply<T> {
        let id = self.next;
        self.next += 1;
        Reply::new(id, core)
    }
}
