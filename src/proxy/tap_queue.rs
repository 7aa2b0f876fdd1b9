//! The queue between a session's relay (and its controller) and its
//! analysis (a future of the same task, polled after the controller, or of
//! any other task: the queue does not care): many senders, one receiver, in
//! push order, bounded for the relay's offers, allocating nothing while it
//! is empty.
//!
//! Why not tokio's `mpsc`: its channel state is cache-line padded and its
//! first block holds 32 slots at once, about 1.1 KiB that every session kept
//! for as long as it was open, idle or not. This queue is a mutex-guarded
//! deque that the receiver empties in one swap: an idle session holds the
//! small shared state and at most two small buffers. The lock is held only to push one
//! message or to swap the whole deque out, never across an await, so the
//! relay never waits on the analysis beyond that instant. The receiver's
//! waker is kept under the same lock; a session's analysis, polled right
//! after its controller in one task, is not woken by that task's own pushes
//! ([`Receiver::polled_after_senders`]).
//!
//! Owns the queue only; what travels in it is [`super::relay::TapMsg`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What the lock guards: the messages, and how to wake the receiver.
struct Locked<T> {
    items: VecDeque<T>,
    /// The receiver's waker while it waits for a message.
    waker: Option<Waker>,
    /// Pushes made from this task wake nobody: the receiver is polled in it
    /// right after them ([`Receiver::polled_after_senders`]).
    quiet: Option<tokio::task::Id>,
}

struct Shared<T> {
    queue: Mutex<Locked<T>>,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    /// Messages pushed and not yet received (in the deque or swapped out
    /// to the receiver): what the bound counts, as tokio's bounded queue.
    waiting: AtomicUsize,
}

impl<T> Shared<T> {
    /// The lock. A poisoned lock means a sender panicked mid-push: the
    /// deque itself is still whole, so go on with it.
    fn lock(&self) -> MutexGuard<'_, Locked<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    /// See [`Receiver::polled_after_senders`].
    quiet: bool,
}

/// A queue whose [`Sender::offer`] refuses beyond `bound` waiting messages.
pub fn queue<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Locked {
            items: VecDeque::new(),
            waker: None,
            quiet: None,
        }),
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
            quiet: false,
        },
    )
}

impl<T> Sender<T> {
    fn push(&self, msg: T, bound: Option<usize>) -> Result<(), Refused> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        let wake = {
            let mut q = self.shared.lock();
            if bound.is_some_and(|b| self.shared.waiting.load(Ordering::Acquire) >= b) {
                return Err(Refused::Full);
            }
            q.items.push_back(msg);
            self.shared.waiting.fetch_add(1, Ordering::AcqRel);
            if q.quiet.is_some() && q.quiet == tokio::task::try_id() {
                None
            } else {
                q.waker.take()
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
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

    /// Half the bound or more is waiting for a receiver that is still
    /// there: a sender that shares its task with the receiver should let
    /// that task's poll return, so the receiver runs before the bound is
    /// reached (see the relay's pump).
    pub fn crowded(&self) -> bool {
        self.shared.receiver_alive.load(Ordering::Acquire)
            && self.shared.waiting.load(Ordering::Acquire) >= self.bound.div_ceil(2)
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
            // The last one: the receiver learns the end, from whatever task
            // this is (once per queue, so no wake-up is skipped here).
            let wake = self.shared.lock().waker.take();
            if let Some(w) = wake {
                w.wake();
            }
        }
    }
}

/// Deques larger than this are freed once drained; smaller ones go back and
/// forth between the senders and the receiver, so steady traffic allocates
/// nothing and an idle session keeps at most two small buffers.
const KEEP: usize = 8;

impl<T> Receiver<T> {
    /// Declares that this receiver is polled, in the task it is first
    /// polled in, after every poll of the futures that push to it from that
    /// task (the session's analysis, polled right after its controller by
    /// `together`): a push from that task then wakes nobody, because the
    /// receiver sees it in the same poll anyway; a wake-up would only poll
    /// the whole task once more for nothing. Pushes from other tasks or
    /// threads, and the last sender's going, still wake it.
    pub fn polled_after_senders(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The next message from `local`, refilled from the shared deque in one
    /// swap when it runs dry (the drained deque goes to the senders in
    /// exchange, for their next pushes). With `cx`, a receiver that finds
    /// nothing registers to be woken (under the same lock as the pushes, so
    /// none is missed).
    fn take(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<T>> {
        if self.local.is_empty() {
            let mut q = self.shared.lock();
            std::mem::swap(&mut self.local, &mut q.items);
            if self.local.is_empty() {
                if self.shared.senders.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(None);
                }
                let Some(cx) = cx else {
                    return Poll::Pending;
                };
                if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    q.waker = Some(cx.waker().clone());
                }
                if self.quiet && q.quiet.is_none() {
                    q.quiet = tokio::task::try_id();
                }
                return Poll::Pending;
            }
        }
        let m = self.local.pop_front();
        if m.is_some() {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        if self.local.is_empty() && self.local.capacity() > KEEP {
            self.local = VecDeque::new();
        }
        Poll::Ready(m)
    }

    /// The next message without waiting, if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        match self.take(None) {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }

    /// The next message; `None` once every sender is gone and nothing is
    /// left. Checks the queue at every poll (a quiet push wakes nobody).
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.take(Some(cx))).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        // What is queued goes now, not when the last sender goes.
        let mut q = self.shared.lock();
        q.items.clear();
        q.items.shrink_to_fit();
        q.waker = None;
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
        assert!(rx.shared.lock().items.capacity() <= KEEP);
    }

    /// A waker that counts its wake-ups.
    struct Counter(AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Pushes from `task` (in it, or from another thread) to a receiver
    /// waiting in it; the wake-ups each caused.
    fn wakes(quiet: bool) -> (usize, usize, usize) {
        let (tx, rx) = queue::<u32>(8);
        let mut rx = if quiet { rx.polled_after_senders() } else { rx };
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let count = || counter.0.load(Ordering::SeqCst);
        // Waits (and, quiet, learns its task).
        assert!(rx.take(Some(&mut cx)).is_pending());
        tx.offer(1).unwrap();
        let same_task = count();
        assert_eq!(rx.take(Some(&mut cx)), Poll::Ready(Some(1)));
        assert!(rx.take(Some(&mut cx)).is_pending());
        let tx2 = tx.clone();
        std::thread::spawn(move || tx2.offer(2).unwrap())
            .join()
            .unwrap();
        let other_thread = count() - same_task;
        assert_eq!(rx.take(Some(&mut cx)), Poll::Ready(Some(2)));
        assert!(rx.take(Some(&mut cx)).is_pending());
        let before = count();
        drop(tx);
        let last_sender = count() - before;
        assert_eq!(rx.take(Some(&mut cx)), Poll::Ready(None));
        (same_task, other_thread, last_sender)
    }

    #[tokio::test]
    async fn a_receiver_polled_after_its_senders_is_not_woken_by_its_own_task() {
        let (quiet, normal) = tokio::spawn(async { (wakes(true), wakes(false)) })
            .await
            .unwrap();
        assert_eq!(
            quiet,
            (0, 1, 1),
            "quiet: (same task, other thread, last sender)"
        );
        assert_eq!(
            normal,
            (1, 1, 1),
            "normal: (same task, other thread, last sender)"
        );
    }
}
