//! The webhook queues: `<queue prefix>.webhooks`, consumed by the deliverers, and one wait queue
//! per retry delay, `<queue prefix>.webhooks.wait.<n>s`, whose messages expire after their delay
//! and are dead-lettered back onto the main queue through the default exchange. All are durable
//! quorum queues, declared only where webhooks are enabled.

use lapin::Channel;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::WebhookError;

/// The retry delays, in seconds, each a wait queue: the n-th retry waits the n-th (the last one
/// from then on), less up to half of it as jitter.
pub const WAIT_SECS: [u64; 6] = [1, 4, 16, 64, 256, 1024];

/// The names of the webhook queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTopology {
    pub queue: String,
    /// `(delay in seconds, queue name)`, shortest first.
    pub waits: Vec<(u64, String)>,
}

impl WebhookTopology {
    /// The queues under `queue_prefix` (`rabbitmq.queue_prefix`).
    pub fn new(queue_prefix: &str) -> WebhookTopology {
        let queue = format!("{queue_prefix}.webhooks");
        let waits = WAIT_SECS.iter().map(|&secs| (secs, format!("{queue}.wait.{secs}s"))).collect();
        WebhookTopology { queue, waits }
    }

    /// The wait queue of the retry after `failures` failed attempts (1 for the first retry), and
    /// its delay in seconds.
    pub fn wait_for(&self, failures: u32) -> (u64, &str) {
        let index = (failures.max(1) as usize - 1).min(self.waits.len() - 1);
        let (secs, name) = &self.waits[index];
        (*secs, name)
    }

    /// Declares every queue (idempotent).
    pub async fn declare(&self, channel: &Channel) -> Result<(), WebhookError> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .queue_declare(&self.queue, durable, quorum())
            .await
            .map_err(WebhookError::amqp(format!("declaring queue {}", self.queue)))?;
        for (secs, name) in &self.waits {
            let mut args = quorum();
            args.insert(ShortString::from("x-message-ttl"), AMQPValue::LongLongInt((secs * 1000) as i64));
            args.insert(ShortString::from("x-dead-letter-exchange"), long_string(""));
            args.insert(ShortString::from("x-dead-letter-routing-key"), long_string(&self.queue));
            channel
                .queue_declare(name, durable, args)
                .await
                .map_err(WebhookError::amqp(format!("declaring queue {name}")))?;
        }
        Ok(())
    }

    /// Deletes every queue, with what it holds (tests clean up with it).
    pub async fn delete(&self, channel: &Channel) -> Result<(), WebhookError> {
        for name in std::iter::once(&self.queue).chain(self.waits.iter().map(|(_, name)| name)) {
            channel
                .queue_delete(name, QueueDeleteOptions::default())
                .await
                .map_err(WebhookError::amqp(format!("deleting queue {name}")))?;
        }
        Ok(())
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), long_string("quorum"));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_backoff_ladder() {
        let topo = WebhookTopology::new("fleet");
        assert_eq!(topo.queue, "fleet.webhooks");
        assert_eq!(topo.waits[0].1, "fleet.webhooks.wait.1s");
        assert_eq!(topo.wait_for(1), (1, "fleet.webhooks.wait.1s"));
        assert_eq!(topo.wait_for(3), (16, "fleet.webhooks.wait.16s"));
        assert_eq!(topo.wait_for(40), (1024, "fleet.webhooks.wait.1024s"));
    }
}
