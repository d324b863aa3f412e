//! How samples get made: through the fleet, or by the engine in this process. Both hand back
//! finished samples (record + where the image is) for the runner to put into shards.

use std::path::PathBuf;

use crate::error::BulkError;
use crate::fleet_exec::FleetExecutor;
use crate::local_exec::LocalExecutor;
use crate::output::Output;
use crate::record::SampleRecord;
use crate::sample::Sample;

/// Where a finished sample's image is.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An object in the fleet's image store.
    Store(String),
    /// A file in the local staging area.
    File(PathBuf),
    /// A file in the output location (a staged sample, see [`crate::staging`]).
    Staged(String),
    /// No image (the sample failed).
    None,
}

/// A sample whose outcome is final.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Index within its shard (the order of samples in the shard).
    pub index: u32,
    pub record: SampleRecord,
    pub image: ImageSource,
}

impl Finished {
    /// A sample that failed before it was ever run (an invalid row, a refused job).
    pub fn failed(sample: &Sample, code: fleet_core::ErrorCode, message: impl Into<String>) -> Finished {
        let mut record = SampleRecord::of(sample);
        record.fail(code, message);
        Finished { index: sample.index, record, image: ImageSource::None }
    }
}

/// The two ways of making samples, behind one set of calls.
pub enum Executor {
    Fleet(Box<FleetExecutor>),
    Local(LocalExecutor),
}

impl Executor {
    /// Samples handed over per call.
    pub fn batch_size(&self) -> usize {
        match self {
            Executor::Fleet(f) => f.batch_size(),
            Executor::Local(_) => 1,
        }
    }

    /// Samples handed over and not yet finished.
    pub fn in_flight(&self) -> usize {
        match self {
            Executor::Fleet(f) => f.in_flight(),
            Executor::Local(l) => l.in_flight(),
        }
    }

    /// (queued, running) among those in flight.
    pub fn counts(&self) -> (u64, u64) {
        match self {
            Executor::Fleet(f) => f.counts(),
            Executor::Local(l) => (l.in_flight().saturating_sub(1) as u64, l.in_flight().min(1) as u64),
        }
    }

    /// Whether a sample's job was cancelled from outside since the last call (fleet runs only).
    pub fn take_saw_cancelled(&mut self) -> bool {
        match self {
            Executor::Fleet(f) => f.take_saw_cancelled(),
            Executor::Local(_) => false,
        }
    }

    /// Hands samples over; some may be final at once (e.g. existing jobs on a resume).
    pub async fn submit(&mut self, samples: Vec<Sample>) -> Result<Vec<Finished>, BulkError> {
        match self {
            Executor::Fleet(f) => f.submit(samples).await,
            Executor::Local(l) => l.submit(samples),
        }
    }

    /// Waits a little and returns what finished meanwhile.
    pub async fn poll(&mut self) -> Result<Vec<Finished>, BulkError> {
        match self {
            Executor::Fleet(f) => f.poll().await,
            Executor::Local(l) => l.poll().await,
        }
    }

    /// The bytes of a finished sample's image (a staged one read from `output`).
    pub async fn image(&self, source: &ImageSource, output: &Output) -> Result<Vec<u8>, BulkError> {
        match (self, source) {
            (Executor::Fleet(f), ImageSource::Store(key)) => f.image(key).await,
            (_, ImageSource::File(path)) => tokio::fs::read(path).await.map_err(|e| BulkError::io(path, e)),
            (_, ImageSource::Staged(name)) => output
                .get(name)
                .await?
                .ok_or_else(|| BulkError::Config(format!("staged image `{name}` is missing from {output}"))),
            (_, other) => Err(BulkError::Config(format!("no image for this sample ({other:?})"))),
        }
    }

    /// Lets the fleet forget the jobs of samples now staged (fleet runs only, see
    /// [`FleetExecutor::release`]).
    pub async fn release(&mut self, jobs: &[uuid::Uuid]) {
        if let Executor::Fleet(f) = self {
            f.release(jobs).await;
        }
    }

    /// Waits for the deletions [`Executor::release`] started.
    pub async fn finish_releases(&mut self) {
        if let Executor::Fleet(f) = self {
            f.finish_releases().await;
        }
    }

    /// Stops everything in flight (fleet: cancels the jobs; local: drops the queue).
    pub async fn cancel(&mut self) -> Result<(), BulkError> {
        match self {
            Executor::Fleet(f) => f.cancel().await,
            Executor::Local(l) => {
                l.cancel();
                Ok(())
            }
        }
    }
}
