//! Work a response starts but does not wait for: settling limits and spend, storing cache
//! entries. On Lambda the container is frozen as soon as an invocation's response is complete,
//! so the Lambda adapter waits for this work before finishing each response; elsewhere it just
//! runs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Background {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

impl Background {
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            work.await;
            if inner.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }

    /// Returns once no background work is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a finish between the check and the wait is seen.
            notified.as_mut().enable();
            if self.inner.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_every_spawned_task() {
        let background = Background::default();
        background.idle().await;
        let done = Arc::new(AtomicBool::new(false));
        for delay in [10, 60] {
            let done = Arc::clone(&done);
            background.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if delay == 60 {
                    done.store(true, Ordering::SeqCst);
                }
            });
        }
        background.idle().await;
        assert!(done.load(Ordering::SeqCst));
    }
}
