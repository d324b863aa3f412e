//! A tenant's lane: the queue of one tenant's jobs for one model and priority.
//!
//! Lanes keep one tenant's backlog from standing in front of another's: each tenant's jobs wait
//! in a queue of their own, every worker of the model consumes every lane, and the worker's
//! batching gives the tenants turns by weight (fleet-render's fair share). A lane's routing
//! key is `<model>.<priority>@<tenant>`; model and tenant names never contain `@`, and priorities
//! never contain `.`, so the key reads back unambiguously.
//!
//! Lanes appear as tenants submit: a dispatcher declares a lane before its first publish to it and
//! records it in the lane registry in Redis, where workers look for new ones.

use fleet_core::Priority;

/// One tenant's jobs for one model and priority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    pub model: String,
    pub priority: Priority,
    pub tenant: String,
}

impl Lane {
    pub fn new(model: &str, priority: Priority, tenant: &str) -> Lane {
        Lane { model: model.to_owned(), priority, tenant: tenant.to_owned() }
    }

    /// `<model>.<priority>@<tenant>`: the lane's routing key, and its name in the registry.
    pub fn routing_key(&self) -> String {
        format!("{}@{}", crate::topology::routing_key(&self.model, self.priority), self.tenant)
    }

    /// The lane of a routing key written by [`Lane::routing_key`], if it is one.
    pub fn parse(routing_key: &str) -> Option<Lane> {
        let (shared, tenant) = routing_key.split_once('@')?;
        let (model, priority) = shared.rsplit_once('.')?;
        let priority = match priority {
            "interactive" => Priority::Interactive,
            "bulk" => Priority::Bulk,
            _ => return None,
        };
        (fleet_core::names::is_library_name(model) && fleet_core::names::is_tenant_name(tenant))
            .then(|| Lane::new(model, priority, tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_read_back() {
        for lane in
            [Lane::new("tiny", Priority::Bulk, "acme"), Lane::new("sdxl.v1-4step", Priority::Interactive, "a.b")]
        {
            assert_eq!(Lane::parse(&lane.routing_key()), Some(lane.clone()), "{}", lane.routing_key());
        }
        assert_eq!(Lane::new("tiny", Priority::Bulk, "acme").routing_key(), "tiny.bulk@acme");
        for not_a_lane in ["tiny.bulk", "tiny.urgent@acme", "tiny.bulk@", "@acme", "tiny.bulk@a@b", "ti/ny.bulk@a"] {
            assert_eq!(Lane::parse(not_a_lane), None, "{not_a_lane}");
        }
    }
}
