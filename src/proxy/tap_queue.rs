//! The queue between a session's relay (and its controller) and its
//! analysis task: many senders, one receiver, in push order, bounded for the
//! relay's offers, allocating nothing while it is empty.
//!
//! Why not tokio's `mpsc`: its channel state is cache-line padded and its
//! first block holds 32 slots at once, about 1.1 KiB that every session kept
//! for as long as it was open, idle or not. This queue is a mutex-guarded
//! deque that the receiver empties in one swap: an idle session holds the
//! small shared state and at most two small buffers. The lock is held only to push one
//! message or to swap the whole deque out, never across an await, so the
//! relay never waits on the analysis beyond that instant.
//!
//! Owns the queue only; what travels in it is [`super::relay::TapMsg`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    /// Wakes the receiver: after a push, and when the last sender goes.
    ready: Notify,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    /// Messages pushed and not yet received (in the deque or swapped out
    /// to the receiver): what the bound counts, as tokio's bounded queue.
    waiting: AtomicUsize,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The bound was reached (offers only).
    Full,
    /// The receiver is gone.
    Closed,
}

/// A sending end; clone it for more senders.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    /// [`Sender::offer`] refuses beyond this many waiting messages.
    bound: usize,
}

/// The receiving end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Taken from the shared deque in one swap, handed out one by one.
    local: VecDeque<T>,
}

/// A queue whose [`Sender::offer`] refuses beyond `bound` waiting messages.
pub fn queue<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        waiting: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
            bound,
        },
        Receiver {
            shared,
            local: VecDeque::new(),
        },
    )
}

impl<T> Sender<T> {
    fn push(&self, msg: T, bound: Option<usize>) -> Result<(), Refused> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        {
            // A poisoned lock means a sender panicked mid-push: the deque
            // itself is still whole, so go on with it.
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if bound.is_some_and(|b| self.shared.waiting.load(Ordering::Acquire) >= b) {
                return Err(Refused::Full);
            }
            q.push_back(msg);
            self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Queues `msg` unless the bound is reached (the relay's chunks: it
    /// never waits, it counts what it could not queue).
    pub fn offer(&self, msg: T) -> Result<(), Refused> {
        self.push(msg, Some(self.bound))
    }

    /// Queues `msg` whatever the bound (the controller's few reports, which
    /// must not be lost).
    pub fn push_always(&self, msg: T) -> Result<(), Refused> {
        self.push(msg, None)
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
            bound: self.bound,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

/// Deques larger than this are freed once drained; smaller ones go back and
/// forth between the senders and the receiver, so steady traffic allocates
/// nothing and an idle session keeps at most two small buffers.
const KEEP: usize = 8;

/// The next message from `local`, refilled from the shared deque in one
/// swap when it runs dry (the drained deque goes to the senders in
/// exchange, for their next pushes).
fn take<T>(shared: &Shared<T>, local: &mut VecDeque<T>) -> Option<T> {
    if local.is_empty() {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(local, &mut *q);
    }
    let m = local.pop_front();
    if m.is_some() {
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }
    if local.is_empty() && local.capacity() > KEEP {
        *local = VecDeque::new();
    }
    m
}

impl<T> Receiver<T> {
    /// The next message without waiting, if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        take(&self.shared, &mut self.local)
    }

    /// The next message; `None` once every sender is gone and nothing is
    /// left.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            // Registered before checking, so a push between the check and
            // the wait is not missed (`notify_one` also stores a permit).
            let ready = self.shared.ready.notified();
            if let Some(m) = take(&self.shared, &mut self.local) {
                return Some(m);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return take(&self.shared, &mut self.local);
            }
            ready.await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        // What is queued goes now, not when the last sender goes.
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.clear();
        q.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_in_push_order_and_end_when_the_senders_go() {
        let (tx, mut rx) = queue::<u32>(4);
        let tx2 = tx.clone();
        for i in 0..4 {
            assert_eq!(tx.offer(i), Ok(()));
        }
        assert_eq!(tx2.offer(99), Err(Refused::Full));
        // The receiver swaps all four out and takes one: three still count.
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(tx2.offer(4), Ok(()));
        assert_eq!(tx2.offer(99), Err(Refused::Full));
        assert_eq!(tx2.push_always(5), Ok(()));
        for i in 1..6 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.try_recv(), None);
        drop(tx);
        assert_eq!(tx2.offer(6), Ok(()));
        drop(tx2);
        assert_eq!(rx.recv().await, Some(6));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_and_frees_what_was_queued() {
        let queued = Arc::new(());
        let (tx, rx) = queue::<Arc<()>>(8);
        assert_eq!(tx.offer(queued.clone()), Ok(()));
        assert_eq!(Arc::strong_count(&queued), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&queued), 1, "still held by the queue");
        assert_eq!(tx.offer(queued.clone()), Err(Refused::Closed));
        assert_eq!(tx.push_always(queued.clone()), Err(Refused::Closed));
        assert_eq!(Arc::strong_count(&queued), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_by_pushes_from_another_thread() {
        let (tx, mut rx) = queue::<u64>(1_000_000);
        let producer = std::thread::spawn(move || {
            for i in 0..100_000u64 {
                while tx.offer(i).is_err() {
                    std::thread::yield_now();
                }
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0u64;
        while let Some(i) = rx.recv().await {
            assert_eq!(i, next, "out of order");
            next += 1;
        }
        producer.join().unwrap();
        assert_eq!(next, 100_000);
    }

    #[test]
    fn an_idle_queue_keeps_at_most_two_small_buffers() {
        let (tx, mut rx) = queue::<u32>(1000);
        for i in 0..500 {
            tx.offer(i).unwrap();
        }
        for i in 0..500 {
            assert_eq!(rx.try_recv(), Some(i));
        }
        // A burst's large deque is freed once drained.
        assert_eq!(rx.local.capacity(), 0);
        for round in 0..3 {
            tx.offer(round).unwrap();
            assert_eq!(rx.try_recv(), Some(round));
            assert_eq!(rx.try_recv(), None);
        }
        assert!(rx.local.capacity() <= KEEP);
        assert!(rx.shared.queue.lock().unwrap().capacity() <= KEEP);
    }
}
