//! A timed event queue: events come out in order of time, and events due at the same time in
//! the order they were pushed, so a run is a pure function of its inputs.

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

/// Events ordered by (time, push order).
#[derive(Debug)]
pub struct EventQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    pushed: u64,
}

#[derive(Debug)]
struct Entry<T> {
    at: Duration,
    seq: u64,
    event: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl<T> EventQueue<T> {
    /// Queues `event` for time `at`.
    pub fn push(&mut self, at: Duration, event: T) {
        self.pushed += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.pushed,
            event,
        }));
    }

    /// The time of the next event.
    pub fn next_time(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Takes the next event if it is due at or before `until`.
    pub fn pop_until(&mut self, until: Duration) -> Option<(Duration, T)> {
        if self.next_time()? > until {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.at, e.event))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_time_then_push_order() {
        let mut q = EventQueue::default();
        let ms = Duration::from_millis;
        q.push(ms(5), "c");
        q.push(ms(1), "a");
        q.push(ms(5), "d");
        q.push(ms(1), "b");
        assert_eq!(q.pop_until(ms(0)), None);
        let mut out = Vec::new();
        while let Some((_, e)) = q.pop_until(ms(10)) {
            out.push(e);
        }
        assert_eq!(out, ["a", "b", "c", "d"]);
    }
}
