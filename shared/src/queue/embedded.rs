//! The local queues (batch, ingest): the `queue` table of the embedded SQLite file (schema in
//! `storage::embedded`), one queue per `name`, with SQS's semantics under a redrive policy.
//!
//! A message is a row with the time it becomes visible and how often it was received. `receive`
//! takes visible rows in one write transaction, hiding them for the visibility timeout and
//! counting the receive, so two receivers (tasks, or processes sharing the file) never get the
//! same visible message; a message not deleted in time is delivered again. A message already
//! received `max_receives` times is moved to the dead letters instead, as SQS's redrive does.
//! Every change is committed before its call returns, so a killed process loses nothing that
//! was enqueued and delivers again whatever it had not deleted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Transaction, TransactionBehavior, params};
use tokio::time::Instant;

use crate::clock::now_millis;
use crate::error::StoreError;
use crate::queue::{MAX_DELAY_SECS, Queue, Received, SEND_BATCH_MAX};
use crate::storage::embedded::EmbeddedStore;

/// The reason SQS gives a message its redrive policy moved to the dead-letter queue.
pub const MAX_RECEIVES_EXCEEDED: &str = "maxReceiveCount exceeded";
/// SQS's largest message, kept locally so what works here works on AWS.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// SQS's longest long poll.
const MAX_WAIT_SECS: u32 = 20;
/// How often a waiting `receive` looks for messages another process enqueued (this process's
/// own sends wake it at once).
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Most dead letters `dead_letters` returns (the oldest).
const DEAD_LETTERS_SHOWN: i64 = 10_000;

pub struct EmbeddedQueue {
    store: Arc<EmbeddedStore>,
    /// Which queue of the table (`''`: the batch queue).
    name: String,
    visibility_ms: i64,
    max_receives: u32,
    poll_every: Duration,
}

fn failed(what: &'static str) -> impl FnOnce(StoreError) -> StoreError {
    move |error| match error {
        StoreError::Backend(message) => {
            StoreError::Backend(format!("{what} the local queue: {message}"))
        }
        other => other,
    }
}

fn now_ms() -> i64 {
    i64::try_from(now_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedQueue {
    /// A queue on `store`'s file: a received message stays hidden for `visibility`, and one
    /// received `max_receives` times (at least 1) goes to the dead letters instead of again.
    pub fn new(store: Arc<EmbeddedStore>, visibility: Duration, max_receives: u32) -> Self {
        Self::named(store, "", visibility, max_receives)
    }

    /// `new` for the queue `name` of the table (the batch queue is `""`).
    pub fn named(
        store: Arc<EmbeddedStore>,
        name: &str,
        visibility: Duration,
        max_receives: u32,
    ) -> Self {
        Self {
            store,
            name: name.to_owned(),
            // At least a millisecond, so a message taken is not visible again in the same
            // transaction.
            visibility_ms: i64::try_from(visibility.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            max_receives: max_receives.max(1),
            poll_every: POLL_EVERY,
        }
    }

    /// The dead letters, oldest first (at most 10,000), with the reason each was moved.
    pub fn dead_letters(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.store
            .with_conn(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT body, COALESCE(reason, '') FROM queue WHERE dead = 1 AND name = ?2
                     ORDER BY id LIMIT ?1",
                )?;
                let rows = stmt.query_map(params![DEAD_LETTERS_SHOWN, self.name], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                rows.collect()
            })
            .map_err(failed("reading the dead letters of"))
    }

    /// (messages waiting or in flight, dead letters).
    pub fn depth(&self) -> Result<(u64, u64), StoreError> {
        let (live, dead) = self
            .store
            .with_conn(|conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM queue
                     WHERE name = ?1",
                    params![self.name],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )
            })
            .map_err(failed("counting the messages of"))?;
        Ok((
            u64::try_from(live).unwrap_or(0),
            u64::try_from(dead).unwrap_or(0),
        ))
    }

    /// Takes up to `max` visible messages in one write transaction.
    fn take(&self, max: usize) -> Result<Vec<Received>, StoreError> {
        let now = now_ms();
        let hidden_until = now.saturating_add(self.visibility_ms);
        let max_receives = self.max_receives;
        let name = self.name.as_str();
        self.store
            .with_conn(|conn| {
                // The write lock from the start: the rows read are the rows updated, whatever
                // another process does meanwhile.
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                let mut taken = Vec::new();
                {
                    let mut due = tx.prepare_cached(
                        "SELECT id, body, receives FROM queue
                         WHERE name = ?3 AND dead = 0 AND visible_at_ms <= ?1
                         ORDER BY visible_at_ms, id LIMIT ?2",
                    )?;
                    let mut hide = tx.prepare_cached(
                        "UPDATE queue SET visible_at_ms = ?1, receives = receives + 1
                         WHERE id = ?2",
                    )?;
                    let mut kill =
                        tx.prepare_cached("UPDATE queue SET dead = 1, reason = ?1 WHERE id = ?2")?;
                    loop {
                        let want = max.saturating_sub(taken.len());
                        let rows = due
                            .query_map(
                                params![now, i64::try_from(want).unwrap_or(i64::MAX), name],
                                |row| {
                                    Ok((
                                        row.get::<_, i64>(0)?,
                                        row.get::<_, String>(1)?,
                                        row.get::<_, u32>(2)?,
                                    ))
                                },
                            )?
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        let found = rows.len();
                        let mut killed = 0;
                        for (id, body, receives) in rows {
                            if receives >= max_receives {
                                kill.execute(params![MAX_RECEIVES_EXCEEDED, id])?;
                                killed += 1;
                            } else {
                                hide.execute(params![hidden_until, id])?;
                                taken.push(Received {
                                    handle: id.to_string(),
                                    body,
                                    receive_count: receives.saturating_add(1),
                                });
                            }
                        }
                        // Dead letters took places: look again for messages to fill them.
                        if killed == 0 || found < want {
                            break;
                        }
                    }
                }
                tx.commit()?;
                Ok(taken)
            })
            .map_err(failed("receiving from"))
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send(&self, bodies: &[String], delay_secs: u32) -> Result<(), StoreError> {
        if bodies.is_empty() {
            return Ok(());
        }
        if let Some(body) = bodies.iter().find(|body| body.len() > MAX_BODY_BYTES) {
            return Err(StoreError::Backend(format!(
                "sending to the local queue: a message of {} bytes is over the {MAX_BODY_BYTES} \
                 bytes a message may have",
                body.len()
            )));
        }
        let visible_at = now_ms().saturating_add(i64::from(delay_secs.min(MAX_DELAY_SECS)) * 1000);
        self.store
            .with_conn(|conn| {
                // All or nothing: one transaction (and one disk write) for the whole call.
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO queue (body, visible_at_ms, receives, dead, name)
                         VALUES (?1, ?2, 0, 0, ?3)",
                    )?;
                    for body in bodies {
                        insert.execute(params![body, visible_at, self.name])?;
                    }
                }
                tx.commit()
            })
            .map_err(failed("sending to"))?;
        self.store.queue_signal().notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError> {
        self.store
            .with_conn(|conn| {
                conn.prepare_cached(
                    "INSERT INTO queue (body, visible_at_ms, receives, dead, reason, name)
                     VALUES (?1, ?2, 0, 1, ?3, ?4)",
                )?
                .execute(params![body, now_ms(), reason, self.name])
            })
            .map_err(failed("dead-lettering a message of"))?;
        Ok(())
    }

    async fn receive(&self, max: usize, wait_secs: u32) -> Result<Vec<Received>, StoreError> {
        let max = max.min(SEND_BATCH_MAX);
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline =
            Instant::now() + Duration::from_secs(u64::from(wait_secs.min(MAX_WAIT_SECS)));
        loop {
            // Registered before looking, so a send between the look and the wait still wakes it.
            let sent = self.store.queue_signal().notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            let taken = self.take(max)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !taken.is_empty() || left.is_zero() {
                return Ok(taken);
            }
            let _ = tokio::time::timeout(left.min(self.poll_every), sent).await;
        }
    }

    async fn delete(&self, handle: &str) -> Result<(), StoreError> {
        let id: i64 = handle.parse().map_err(|_| {
            StoreError::Backend(format!(
                "deleting from the local queue: `{}` is not a message handle",
                handle.escape_debug()
            ))
        })?;
        // A message moved to the dead letters meanwhile stays there, as with SQS's DLQ.
        self.store
            .with_conn(|conn| {
                conn.prepare_cached("DELETE FROM queue WHERE id = ?1 AND dead = 0")?
                    .execute(params![id])
            })
            .map_err(failed("deleting from"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::storage::embedded::test_dir;

    fn bodies(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_message_not_deleted_comes_back_after_the_visibility_timeout() {
        let dir = test_dir("queue-again");
        let store = EmbeddedStore::open(&dir).unwrap();
        let queue = EmbeddedQueue::new(store, Duration::from_millis(300), 5);
        queue.send(&bodies(&["item-1"]), 0).await.unwrap();

        let first = queue.receive(10, 0).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].body.as_str(), first[0].receive_count),
            ("item-1", 1)
        );
        // Hidden while in flight.
        assert!(queue.receive(10, 0).await.unwrap().is_empty());
        assert_eq!(queue.depth().unwrap(), (1, 0));

        tokio::time::sleep(Duration::from_millis(400)).await;
        let again = queue.receive(10, 0).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, "item-1");
        assert_eq!(again[0].receive_count, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_deleted_message_is_never_delivered_again() {
        let dir = test_dir("queue-delete");
        let store = EmbeddedStore::open(&dir).unwrap();
        let queue = EmbeddedQueue::new(store, Duration::from_millis(100), 5);
        queue.send(&bodies(&["a", "b"]), 0).await.unwrap();
        let taken = queue.receive(10, 0).await.unwrap();
        assert_eq!(
            taken.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        queue.delete(&taken[0].handle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = queue.receive(10, 0).await.unwrap();
        assert_eq!(
            again.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        queue.delete(&again[0].handle).await.unwrap();
        assert_eq!(queue.depth().unwrap(), (0, 0));
        assert!(queue.delete("not-a-handle").await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_delayed_message_is_delivered_only_after_its_delay() {
        let dir = test_dir("queue-delay");
        let store = EmbeddedStore::open(&dir).unwrap();
        let queue = EmbeddedQueue::new(store, Duration::from_secs(30), 5);
        queue.send(&bodies(&["later"]), 1).await.unwrap();
        queue.send(&bodies(&["now"]), 0).await.unwrap();
        let first = queue.receive(10, 0).await.unwrap();
        assert_eq!(
            first.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["now"]
        );

        let started = std::time::Instant::now();
        let later = queue.receive(10, 5).await.unwrap();
        assert_eq!(
            later.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["later"]
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_message_received_max_receives_times_goes_to_the_dead_letters() {
        let dir = test_dir("queue-redrive");
        let store = EmbeddedStore::open(&dir).unwrap();
        let queue = EmbeddedQueue::new(store, Duration::from_millis(50), 2);
        queue
            .send(&bodies(&["poison", "healthy"]), 0)
            .await
            .unwrap();
        let mut poison_handle = None;
        for count in 1..=2 {
            let taken = queue.receive(10, 0).await.unwrap();
            assert_eq!(taken.len(), 2);
            assert!(taken.iter().all(|m| m.receive_count == count));
            // The healthy one is done on its second receive; the poison one is not.
            if count == 2 {
                let healthy = taken.iter().find(|m| m.body == "healthy").unwrap();
                queue.delete(&healthy.handle).await.unwrap();
                let poison = taken.iter().find(|m| m.body == "poison").unwrap();
                poison_handle = Some(poison.handle.clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(queue.receive(10, 0).await.unwrap().is_empty());
        queue.delete(&poison_handle.unwrap()).await.unwrap();
        queue
            .dead_letter("{not json", "malformed message")
            .await
            .unwrap();
        assert_eq!(
            queue.dead_letters().unwrap(),
            [
                ("poison".to_owned(), MAX_RECEIVES_EXCEEDED.to_owned()),
                ("{not json".to_owned(), "malformed message".to_owned()),
            ]
        );
        assert_eq!(queue.depth().unwrap(), (0, 2));
        // Dead letters are never delivered (and the late delete above removed none).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(queue.receive(10, 0).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn named_queues_on_one_file_never_see_each_others_messages() {
        let dir = test_dir("queue-named");
        let store = EmbeddedStore::open(&dir).unwrap();
        let batch = EmbeddedQueue::new(store.clone(), Duration::from_secs(30), 5);
        let ingest = EmbeddedQueue::named(store, "ingest", Duration::from_secs(30), 5);
        batch.send(&bodies(&["batch-item"]), 0).await.unwrap();
        ingest.send(&bodies(&["ingest-job"]), 0).await.unwrap();
        ingest.dead_letter("bad-job", "malformed").await.unwrap();
        assert_eq!(batch.depth().unwrap(), (1, 0));
        assert_eq!(ingest.depth().unwrap(), (1, 1));
        let taken = ingest.receive(10, 0).await.unwrap();
        assert_eq!(
            taken.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["ingest-job"]
        );
        let taken = batch.receive(10, 0).await.unwrap();
        assert_eq!(
            taken.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["batch-item"]
        );
        assert!(batch.dead_letters().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn messages_survive_reopening_the_store() {
        let dir = test_dir("queue-durable");
        {
            let store = EmbeddedStore::open(&dir).unwrap();
            let queue = EmbeddedQueue::new(store, Duration::from_millis(100), 5);
            queue
                .send(&bodies(&["waiting", "in-flight"]), 0)
                .await
                .unwrap();
            let taken = queue.receive(1, 0).await.unwrap();
            assert_eq!(taken[0].body, "waiting");
            // The process dies here, with "waiting" received and not deleted.
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let store = EmbeddedStore::open(&dir).unwrap();
        let queue = EmbeddedQueue::new(store, Duration::from_millis(100), 5);
        let mut taken = queue.receive(10, 0).await.unwrap();
        taken.sort_by(|a, b| a.body.cmp(&b.body));
        assert_eq!(
            taken
                .iter()
                .map(|m| (m.body.as_str(), m.receive_count))
                .collect::<Vec<_>>(),
            [("in-flight", 1), ("waiting", 2)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_receivers_never_get_the_same_visible_message() {
        let dir = test_dir("queue-race");
        // Two stores on one file: two processes, each with several receiving tasks.
        let stores = [
            EmbeddedStore::open(&dir).unwrap(),
            EmbeddedStore::open(&dir).unwrap(),
        ];
        let sender = EmbeddedQueue::new(stores[0].clone(), Duration::from_secs(60), 5);
        let all: Vec<String> = (0..300).map(|i| format!("item-{i}")).collect();
        sender.send(&all, 0).await.unwrap();
        let mut tasks = Vec::new();
        for store in &stores {
            for _ in 0..4 {
                let queue = EmbeddedQueue::new(store.clone(), Duration::from_secs(60), 5);
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let taken = queue.receive(7, 0).await.unwrap();
                        if taken.is_empty() {
                            return got;
                        }
                        got.extend(taken.into_iter().map(|m| m.body));
                    }
                }));
            }
        }
        let mut seen = HashSet::new();
        let mut received = 0;
        for task in tasks {
            for body in task.await.unwrap() {
                received += 1;
                assert!(seen.insert(body.clone()), "{body} delivered twice");
            }
        }
        assert_eq!(received, all.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_waiting_receive_wakes_on_a_send_and_finds_other_processes_messages() {
        let dir = test_dir("queue-wait");
        let store = EmbeddedStore::open(&dir).unwrap();
        let mut waiting = EmbeddedQueue::new(store.clone(), Duration::from_secs(30), 5);
        // Polling so rare that only the signal can wake it in time.
        waiting.poll_every = Duration::from_secs(30);
        let waiting = Arc::new(waiting);
        let receiver = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let taken = waiting.receive(10, 10).await.unwrap();
                (taken, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sender = EmbeddedQueue::new(store, Duration::from_secs(30), 5);
        sender.send(&bodies(&["wake"]), 0).await.unwrap();
        let (taken, waited) = receiver.await.unwrap();
        assert_eq!(taken.len(), 1);
        assert!(waited < Duration::from_secs(2), "{waited:?}");

        // Another process's send has no signal here: the poll finds it.
        let polling = EmbeddedQueue::new(
            EmbeddedStore::open(&dir).unwrap(),
            Duration::from_secs(30),
            5,
        );
        let other = EmbeddedQueue::new(
            EmbeddedStore::open(&dir).unwrap(),
            Duration::from_secs(30),
            5,
        );
        let receiver = tokio::spawn(async move { polling.receive(10, 10).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        other.send(&bodies(&["from the CLI"]), 0).await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(3), receiver)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken[0].body, "from the CLI");

        // With nothing to take, it returns empty when the wait ends.
        let started = std::time::Instant::now();
        assert!(waiting.receive(10, 1).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
