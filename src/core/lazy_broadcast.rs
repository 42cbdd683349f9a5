//! [`LazyBroadcast`]: a broadcast channel whose buffer is allocated by its first subscriber.
//!
//! A core keeps channels for its events, its verified blocks and the like. A store that serves
//! thousands of cores nobody reads locally would otherwise hold every channel's buffer (tens
//! of KiB each) for nothing.

use std::sync::OnceLock;

use tokio::sync::broadcast;

/// A broadcast channel of `capacity` made on the first [`subscribe`](Self::subscribe): sends
/// before that reach nobody, as they would with no receiver.
#[derive(Debug)]
pub(crate) struct LazyBroadcast<T> {
    capacity: usize,
    sender: OnceLock<broadcast::Sender<T>>,
}

impl<T: Clone> LazyBroadcast<T> {
    /// A channel of `capacity` messages, not allocated yet.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            sender: OnceLock::new(),
        }
    }

    /// A receiver of the messages sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.sender
            .get_or_init(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Sends `value` to the current receivers, if any.
    pub fn send(&self, value: T) {
        if let Some(sender) = self.sender.get() {
            let _ = sender.send(value);
        }
    }

    /// How many receivers there are.
    pub fn receiver_count(&self) -> usize {
        self.sender
            .get()
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allocated_or_delivered_before_the_first_subscriber() {
        let channel = LazyBroadcast::new(4);
        channel.send(1u8);
        assert_eq!(channel.receiver_count(), 0);
        assert!(channel.sender.get().is_none());
        let mut rx = channel.subscribe();
        channel.send(2);
        assert_eq!(
            rx.try_recv().ok(),
            Some(2),
            "the send before subscribing is gone"
        );
        assert_eq!(channel.receiver_count(), 1);
    }
}
