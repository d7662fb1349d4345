//! The open-loop job queue between the schedulers and the senders.
//!
//! A job is only "call of stream `s`, due at `t`": the sender builds and signs the request
//! when it takes the job, so a backlog costs 16 bytes a call, not a request. Schedulers push
//! due jobs in batches; each of the `--connections` senders pops the oldest job, sends it, and
//! comes back. The queue is bounded: beyond `max_len` waiting jobs, new ones are refused (the
//! caller counts them as skipped).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// One open-loop call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub stream: usize,
    /// When the timetable says it should be sent; latency is measured from here.
    pub due: Instant,
}

#[derive(Default)]
struct Inner {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer FIFO of jobs.
pub struct JobQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    max_len: usize,
}

impl JobQueue {
    pub fn new(max_len: usize) -> JobQueue {
        JobQueue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            max_len: max_len.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `jobs` in order; returns how many were refused because the queue was full.
    pub fn push_all(&self, jobs: impl IntoIterator<Item = Job>) -> u64 {
        let (mut pushed, mut refused) = (0usize, 0u64);
        {
            let mut g = self.lock();
            for job in jobs {
                if g.jobs.len() >= self.max_len {
                    refused += 1;
                } else {
                    g.jobs.push_back(job);
                    pushed += 1;
                }
            }
        }
        // One wake per job (a sender that is busy finds the rest when it comes back).
        for _ in 0..pushed {
            self.notify.notify_one();
        }
        refused
    }

    /// The oldest job, waiting for one if the queue is empty; `None` once the queue is closed
    /// and empty.
    pub async fn pop(&self) -> Option<Job> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a close between the look and the wait is not lost.
            notified.as_mut().enable();
            {
                let mut g = self.lock();
                if let Some(job) = g.jobs.pop_front() {
                    return Some(job);
                }
                if g.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more jobs will come; with `drop_pending`, the waiting ones are discarded and their
    /// streams returned (to be counted as not sent).
    pub fn close(&self, drop_pending: bool) -> Vec<usize> {
        let dropped = {
            let mut g = self.lock();
            g.closed = true;
            if drop_pending {
                g.jobs.drain(..).map(|j| j.stream).collect()
            } else {
                vec![]
            }
        };
        self.notify.notify_waiters();
        dropped
    }

    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn job(stream: usize) -> Job {
        Job {
            stream,
            due: Instant::now(),
        }
    }

    #[tokio::test]
    async fn fifo_bounded_and_closable() {
        let q = JobQueue::new(2);
        assert_eq!(q.push_all([job(1), job(2), job(3)]), 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().await.map(|j| j.stream), Some(1));
        assert_eq!(q.close(false), Vec::<usize>::new());
        assert_eq!(q.pop().await.map(|j| j.stream), Some(2));
        assert_eq!(q.pop().await, None);

        let q = JobQueue::new(10);
        q.push_all([job(4), job(5)]);
        assert_eq!(q.close(true), vec![4, 5]);
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_consumers_get_every_job_then_stop_on_close() {
        let q = Arc::new(JobQueue::new(100_000));
        let consumers: Vec<_> = (0..8)
            .map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while q.pop().await.is_some() {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for batch in 0..100 {
            q.push_all((0..50).map(|i| job(batch * 50 + i)));
            tokio::task::yield_now().await;
        }
        q.close(false);
        let mut total = 0;
        for c in consumers {
            total += c.await.unwrap();
        }
        assert_eq!(total, 5000);
    }
}
