//! DNS resolution that hands reqwest only allowed addresses, so the connection goes to an
//! address that was checked (no second lookup an attacker's DNS could answer differently).

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::error::EgressError;
use crate::policy::Rules;

#[derive(Debug)]
pub(crate) struct CheckingResolver {
    pub(crate) rules: Arc<Rules>,
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules.clone();
        Box::pin(async move {
            type Refusal = Box<dyn std::error::Error + Send + Sync>;
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(EgressError::Resolve { host: host.clone(), reason: e.to_string() }) as Refusal)?
                .collect();
            // Any refused address refuses the name: a name that mixes public and private answers
            // is how DNS rebinding hides its private one.
            for addr in &found {
                rules.check_addr(&host, addr.ip()).map_err(|e| Box::new(e) as Refusal)?;
            }
            if found.is_empty() {
                return Err(Box::new(EgressError::Resolve { host, reason: "no addresses".into() }) as Refusal);
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}
