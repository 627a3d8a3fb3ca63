//! Active health checks of ejected instances. When repeated failures take
//! an instance out of rotation, one probe task asks it for the configured
//! path every interval; the first answer below 500 puts it back. The task
//! ends when the instance is back (by the probe or by a request it served),
//! when it has left the registry, or at shutdown, so there is never more
//! than one task per ejected instance.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Uri};
use tokio_util::sync::CancellationToken;

use super::balance::Balancer;
use super::proxy::Upstream;
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
        let url = instance.url;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(plan.interval) => {}
            }
            if !balancer.is_ejected(&url) {
                return;
            }
            if let Ok(list) = registry.resolve(&service).await
                && !list.iter().any(|i| i.url == url)
            {
                balancer.forget(&url);
                return;
            }
            if answers(&client, &url, &plan).await {
                balancer.readmit(&url);
                tracing::info!(service = %service, instance = %url, "upstream instance readmitted after a probe");
                return;
            }
        }
    });
}

/// Whether the instance answers the probe with a status below 500 within
/// one interval.
async fn answers(client: &Upstream, url: &str, plan: &ProbePlan) -> bool {
    let Ok(uri) = format!("{url}{}", plan.path).parse::<Uri>() else {
        return false;
    };
    let Ok(request) = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Body::empty())
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(plan.interval, client.request(request)).await,
        Ok(Ok(response)) if response.status().as_u16() < 500
    )
}
