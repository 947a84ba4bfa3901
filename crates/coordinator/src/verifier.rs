//! Signature verification for worker messages, batched across sessions.
//!
//! Verifying one ed25519 signature costs a double scalar multiplication, and at 10,000 workers
//! it is most of the coordinator's CPU. Verified together, signatures share the doublings of one
//! multiscalar multiplication, so the verifier task collects what arrives within a short window
//! and checks it as one batch. When a batch fails, each signature is checked alone, so one bad
//! message never condemns another. Batches use the cofactorless random-linear-combination check
//! of `ed25519_dalek::verify_batch`; a signature only its own key could have produced is never
//! accepted for another key, which is what the protocol relies on.

use std::time::Duration;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Jobs waiting for the verifier; sessions wait (backpressure) when it is full.
const VERIFY_QUEUE_MAX: usize = 4096;
/// Most signatures checked in one batch.
const BATCH_SIGNATURES_MAX: usize = 128;
/// How long the first job of a batch waits for company.
const BATCH_WINDOW_MS: u64 = 50;

/// One signature to check.
#[derive(Debug)]
pub struct Job {
    pub key: VerifyingKey,
    pub message: Vec<u8>,
    pub signature: Signature,
}

/// Sends jobs to the verifier task. Cheap to clone; the task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct Verifier {
    jobs: mpsc::Sender<(Job, oneshot::Sender<bool>)>,
}

impl Verifier {
    /// Starts the verifier task.
    pub fn start() -> (Verifier, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(VERIFY_QUEUE_MAX);
        (Verifier { jobs }, tokio::spawn(run(queue)))
    }

    /// Whether `signature` over `message` verifies under `key`.
    pub async fn verify(&self, job: Job) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send((job, reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn run(mut queue: mpsc::Receiver<(Job, oneshot::Sender<bool>)>) {
    let mut batch = Vec::with_capacity(BATCH_SIGNATURES_MAX);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(BATCH_WINDOW_MS);
        while batch.len() < BATCH_SIGNATURES_MAX {
            tokio::select! {
                next = queue.recv() => match next {
                    Some(job) => batch.push(job),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let (jobs, replies): (Vec<Job>, Vec<_>) = batch.drain(..).unzip();
        for (verdict, reply) in check(&jobs).into_iter().zip(replies) {
            let _ = reply.send(verdict);
        }
    }
}

/// The verdict for each job: all at once when the batch verifies, one by one otherwise.
pub fn check(jobs: &[Job]) -> Vec<bool> {
    if jobs.len() > 1 {
        let messages: Vec<&[u8]> = jobs.iter().map(|job| job.message.as_slice()).collect();
        let signatures: Vec<Signature> = jobs.iter().map(|job| job.signature).collect();
        let keys: Vec<VerifyingKey> = jobs.iter().map(|job| job.key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return vec![true; jobs.len()];
        }
    }
    jobs.iter()
        .map(|job| job.key.verify(&job.message, &job.signature).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn job(key_byte: u8, message: &[u8], signer_byte: u8) -> Job {
        let signer = SigningKey::from_bytes(&[signer_byte; 32]);
        Job {
            key: SigningKey::from_bytes(&[key_byte; 32]).verifying_key(),
            message: message.to_vec(),
            signature: signer.sign(message),
        }
    }

    #[test]
    fn good_batches_pass_and_a_bad_signature_is_singled_out() {
        let good: Vec<Job> = (1..=10).map(|i| job(i, &[i; 40], i)).collect();
        assert_eq!(check(&good), vec![true; 10]);
        let mut mixed: Vec<Job> = (1..=10).map(|i| job(i, &[i; 40], i)).collect();
        mixed[3] = job(4, b"claims to be worker 4", 5);
        let verdicts = check(&mixed);
        assert_eq!(verdicts.iter().filter(|v| !**v).count(), 1);
        assert!(!verdicts[3]);
        assert_eq!(check(&[job(1, b"alone", 2)]), vec![false]);
        assert_eq!(check(&[job(1, b"alone", 1)]), vec![true]);
    }

    #[tokio::test]
    async fn the_task_answers_every_job() {
        let (verifier, _task) = Verifier::start();
        let answers = futures_util::future::join_all((1..=20u8).map(|i| {
            let verifier = verifier.clone();
            async move {
                verifier
                    .verify(job(i, &[i; 8], if i == 7 { 8 } else { i }))
                    .await
            }
        }))
        .await;
        for (i, ok) in (1..=20u8).zip(answers) {
            assert_eq!(ok, i != 7, "job {i}");
        }
    }
}
