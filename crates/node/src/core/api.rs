//! Adapts the market to the API: answers the [`Command`](super::Command)s of
//! [`NodeHandle`](crate::NodeHandle)s (submissions, queries, waits for a final job). It feeds the
//! market and reads its records; it decides nothing itself.

use agora_market::{Input, JobRecord};
use agora_net::PeerId;
use agora_types::job::{JobId, SignedJob, job_id};
use agora_types::now_ms;
use tokio::sync::oneshot;
use tracing::info;

use super::{Core, MAX_WAITERS};

impl Core {
    /// Takes a job from the API and answers its id at once: the handle committed the job's
    /// first record before it sent the job here (`NodeHandle::submit`), so a restart resumes it
    /// whatever happens to the market's later writes.
    pub(super) fn submit(&mut self, job: Box<SignedJob>, reply: oneshot::Sender<JobId>) {
        let id = job_id(&job);
        info!(job = %id.short(), "job submitted");
        self.feed(Input::Submit(*job));
        let _ = reply.send(id);
    }

    /// Every job record, newest first.
    pub(super) fn jobs(&self, reply: oneshot::Sender<Vec<JobRecord>>) {
        let mut all: Vec<JobRecord> = self.market.jobs().cloned().collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        let _ = reply.send(all);
    }

    /// Answers once the job is final (see [`Core::wake_waiters`]); at once if it is, or unknown,
    /// or too many callers are waiting already.
    pub(super) fn wait_final(&mut self, id: JobId, reply: oneshot::Sender<Option<JobRecord>>) {
        match self.market.job(&id) {
            Some(r) if !r.state.is_final() => {
                let waiting = self.waiters.values().map(Vec::len).sum::<usize>();
                if waiting < MAX_WAITERS {
                    self.waiters.entry(id).or_default().push(reply);
                } else {
                    // Too many waiting: the caller sees the pending record and asks again.
                    let _ = reply.send(Some(r.clone()));
                }
            }
            other => {
                let _ = reply.send(other.cloned());
            }
        }
    }

    /// The capability ads not lapsed yet.
    pub(super) fn offers(&self, reply: oneshot::Sender<Vec<(PeerId, agora_market::IndexEntry)>>) {
        let (now, ttl) = (now_ms(), self.market.config().ad_ttl_ms);
        let fresh = self.market.index().iter();
        let fresh = fresh.filter(|(_, e)| now.saturating_sub(e.updated_ms) <= ttl);
        let _ = reply.send(fresh.map(|(p, e)| (*p, e.clone())).collect());
    }

    /// Answers everyone waiting for `job_id` to be final.
    pub(super) fn wake_waiters(&mut self, job_id: JobId) {
        if let Some(waiting) = self.waiters.remove(&job_id) {
            let rec = self.market.job(&job_id).cloned();
            for w in waiting {
                let _ = w.send(rec.clone());
            }
        }
    }
}
