//! The lane registry: the routing keys of the tenants' lanes (`<model>.<priority>@<tenant>`,
//! see `fleet_queue::lane`) that dispatchers have declared, so workers can find and consume them.
//! Entries are only added: a lane with nothing in it costs a worker an idle consumer.

use super::StatusStore;
use crate::error::StatusError;

impl StatusStore {
    /// Records a lane (idempotent).
    pub async fn register_lane(&self, routing_key: &str) -> Result<(), StatusError> {
        let key = self.keys.lanes();
        let mut con = self.conn.clone();
        let query = redis::cmd("SADD").arg(&key).arg(routing_key).clone();
        let _: i64 = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        Ok(())
    }

    /// Every registered lane's routing key, sorted.
    pub async fn lanes(&self) -> Result<Vec<String>, StatusError> {
        let key = self.keys.lanes();
        let mut con = self.conn.clone();
        let query = redis::cmd("SMEMBERS").arg(&key).clone();
        let mut lanes: Vec<String> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        lanes.sort();
        Ok(lanes)
    }
}
