//! The thread that runs the engine's generations, one after another.
//!
//! The worker generates one batch at a time. On tokio's blocking pool each pass ran on whichever
//! pool thread was free — often one that had just encoded the previous batch's images — and the
//! engine's per-thread GPU state (cuDNN and cuBLASLt handles, convolution plans and workspaces,
//! candle's own cuDNN handle) was made again on every thread it met, each copy holding GPU memory.
//! One long-lived thread keeps a single copy, made by the first generation.

use std::sync::mpsc;

type Work = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum EngineThreadError {
    #[error("the engine thread has stopped")]
    Stopped,
    #[error("the engine panicked: {0}")]
    Panicked(String),
}

/// A handle to the engine thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct EngineThread {
    queue: mpsc::Sender<Work>,
}

impl EngineThread {
    pub fn spawn() -> std::io::Result<Self> {
        let (queue, work) = mpsc::channel::<Work>();
        std::thread::Builder::new().name("fleet-engine".into()).spawn(move || {
            for job in work {
                job();
            }
        })?;
        Ok(Self { queue })
    }

    /// Runs `f` on the engine thread once the work queued before it is done. A panic in `f` comes
    /// back as an error, and the thread goes on with the next work.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, EngineThreadError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_message);
            // The caller may have stopped waiting; the result is then not wanted.
            let _ = reply.send(outcome);
        });
        self.queue.send(work).map_err(|_| EngineThreadError::Stopped)?;
        result.await.map_err(|_| EngineThreadError::Stopped)?.map_err(EngineThreadError::Panicked)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "non-text panic".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_in_order_on_one_thread_and_survives_a_panic() {
        let engine = EngineThread::spawn().unwrap();
        let first = engine.run(|| std::thread::current().id()).await.unwrap();
        let err = engine.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(&err, EngineThreadError::Panicked(m) if m == "boom"), "{err}");
        let after = engine.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(first, after, "every piece of work runs on the same thread");
        assert_ne!(first, std::thread::current().id());
        assert_eq!(engine.run(|| 6 * 7).await.unwrap(), 42);
    }
}
