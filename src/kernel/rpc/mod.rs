//! gRPC clients for service-to-service calls. A caller asks for a channel to
//! a service by name; the factory resolves it through the registry and
//! spreads calls over the instances found, with connect and request
//! timeouts on every call, repeats on another instance, ejection and a
//! circuit breaker (see [`resilient`]). Channels are kept per service and
//! rebuilt when the set of instances changes. A channel's background tasks run on the runtime the
//! factory was made on, whichever thread first asks for the channel (the
//! gateway's I/O threads stop before the process does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod resilient;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use resilient::{Member, Resilient};

use super::config::RpcConfig;
use super::credentials::Caller;
use super::locks;
use super::registry::{Registry, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no instance of service {0} is registered")]
    NoInstance(String),
    #[error("bad address {url} for service {service}: {reason}")]
    BadAddress {
        service: String,
        url: String,
        reason: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A channel to another service whose every call carries the calling
/// service's credential (see [`super::credentials`]) and the caller's trace
/// context (`traceparent`). Generated clients take it as they take a plain
/// channel: `IdentityClient::new(clients.channel("identity").await?)`.
pub type RpcChannel = InterceptedService<Resilient, Propagate>;

/// Adds the caller's credential and the current trace context to each
/// outgoing call.
#[derive(Clone)]
pub struct Propagate {
    caller: Option<Arc<Caller>>,
    callee: Arc<str>,
}

impl Interceptor for Propagate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        // Without a caller the call goes unsigned: open methods (health)
        // answer it, the others refuse it.
        if let Some(caller) = &self.caller {
            let token = caller
                .token(&self.callee)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            metadata.insert(super::credentials::HEADER, token);
        }
        super::telemetry::inject_current(metadata);
        Ok(request)
    }
}

/// `channel` to `callee`, its calls signed by `caller`.
pub fn signed<S>(
    channel: S,
    caller: Option<Arc<Caller>>,
    callee: &str,
) -> InterceptedService<S, Propagate> {
    InterceptedService::new(
        channel,
        Propagate {
            caller,
            callee: Arc::from(callee),
        },
    )
}

/// A service's instances as calls see them, and the URLs they were built for.
type Known = (Vec<String>, Resilient);

/// Spawns onto one runtime, from any thread.
#[derive(Clone)]
struct OnRuntime(tokio::runtime::Handle);

impl<F> hyper::rt::Executor<F> for OnRuntime
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, work: F) {
        self.0.spawn(work);
    }
}

/// Makes channels to other services. Cheap to clone.
#[derive(Clone)]
pub struct Clients {
    registry: Arc<dyn Registry>,
    connect_timeout: Duration,
    request_timeout: Duration,
    channels: Arc<Mutex<HashMap<String, Known>>>,
    runtime: Option<tokio::runtime::Handle>,
    /// Signs the calls; `None` where no service of this process may call.
    caller: Option<Arc<Caller>>,
}

impl Clients {
    /// Clients whose calls `caller` signs.
    pub fn new(
        registry: Arc<dyn Registry>,
        config: &RpcConfig,
        caller: Option<Arc<Caller>>,
    ) -> Self {
        Self {
            registry,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            channels: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            caller,
        }
    }

    /// The same clients (and channels), signing as `caller`.
    pub fn calling_as(&self, caller: Arc<Caller>) -> Self {
        Self {
            caller: Some(caller),
            ..self.clone()
        }
    }

    /// A channel to `service`, balanced over its registered instances.
    /// Connections are made lazily, so this does not wait on the network.
    pub async fn channel(&self, service: &str) -> Result<RpcChannel, RpcError> {
        self.plain_channel(service)
            .await
            .map(|channel| signed(channel, self.caller.clone(), service))
    }

    async fn plain_channel(&self, service: &str) -> Result<Resilient, RpcError> {
        let instances = self.registry.resolve(service).await?;
        if instances.is_empty() {
            return Err(RpcError::NoInstance(service.to_owned()));
        }
        let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
        let mut cache = locks::lock(&self.channels);
        // The instances still listed keep their connections and what calls
        // made of them; the service keeps its retry budget.
        let (mut kept, budget) = match cache.get(service) {
            Some((known, pool)) if *known == urls => return Ok(pool.clone()),
            Some((_, pool)) => pool.parts(),
            None => (HashMap::new(), resilient::budget()),
        };
        let members = urls
            .iter()
            .map(|url| match kept.remove(url) {
                Some(member) => Ok(member),
                None => self
                    .endpoint(service, url)
                    .map(|e| Member::new(url.clone(), e.connect_lazy())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = Resilient::new(service, members, budget, self.runtime.clone());
        cache.insert(service.to_owned(), (urls, pool.clone()));
        Ok(pool)
    }

    fn endpoint(&self, service: &str, url: &str) -> Result<Endpoint, RpcError> {
        Endpoint::from_shared(url.to_owned())
            .map(|e| {
                let e = e
                    .connect_timeout(self.connect_timeout)
                    .timeout(self.request_timeout);
                match &self.runtime {
                    Some(runtime) => e.executor(OnRuntime(runtime.clone())),
                    None => e,
                }
            })
            .map_err(|e| RpcError::BadAddress {
                service: service.to_owned(),
                url: url.to_owned(),
                reason: e.to_string(),
            })
    }
}
