//! Active health checks of ejected instances. When repeated failures take
//! an instance out of rotation, one probe task asks it for the configured
//! path every interval; the first response below 500 puts it back. The task
//! ends when the instance is back (by the probe or by a request it served),
//! when it has left the registry, or at shutdown, so there is never more
//! than one task per ejected instance.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::balance::Balancer;
use super::client::{Upstream, ask};
use crate::kernel::registry::{Instance, Registry};

/// Where and how often to probe.
#[derive(Clone)]
pub struct ProbePlan {
    pub path: String,
    pub interval: Duration,
}

/// Starts probing `instance` of `service` until it is readmitted.
pub fn spawn(
    balancer: Arc<Balancer>,
    registry: Arc<dyn Registry>,
    client: Upstream,
    plan: ProbePlan,
    service: String,
    instance: Instance,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let id = instance.id.clone();
        if watch(
            &balancer, &*registry, &client, &plan, &service, &instance, &shutdown,
        )
        .await
        {
            balancer.probe_ended(&id);
        }
    });
}

/// Probes until the instance is back, gone or the gateway stops; answers
/// whether the instance is still known (false when it was forgotten).
async fn watch(
    balancer: &Balancer,
    registry: &dyn Registry,
    client: &Upstream,
    plan: &ProbePlan,
    service: &str,
    instance: &Instance,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return true,
            () = tokio::time::sleep(plan.interval) => {}
        }
        if !balancer.is_ejected(&instance.id) {
            return true;
        }
        if let Ok(list) = registry.resolve(service).await
            && !list.iter().any(|i| i.id == instance.id)
        {
            balancer.forget(&instance.id);
            return false;
        }
        if responses(client, &instance.url, plan).await {
            balancer.readmit(&instance.id);
            tracing::info!(service, instance = %instance.url, "upstream instance readmitted after a probe");
            return true;
        }
    }
}

/// Whether the instance answers the probe with a status below 500 within
/// one interval.
async fn responses(client: &Upstream, url: &str, plan: &ProbePlan) -> bool {
    ask(client, &format!("{url}{}", plan.path), plan.interval)
        .await
        .is_some_and(|response| response.status().as_u16() < 500)
}
