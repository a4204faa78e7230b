//! The NATS broker: live events on core NATS subjects (DESIGN section 2).
//!
//! Headers: `Herald-Type` names the event (default `message`); `Herald-Published-At` is stamped on
//! publish for end-to-end latency; `Herald-From` carries the sender of client events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::{Broker, BrokerError, EventStream};
use crate::event::{Delivery, EventId, Outgoing, SubjectKind, Target};
use crate::names::DEFAULT_EVENT_TYPE;

pub const HEADER_TYPE: &str = "Herald-Type";
pub const HEADER_PUBLISHED_AT: &str = "Herald-Published-At";
pub const HEADER_FROM: &str = "Herald-From";

/// How to reach NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// One or more server URLs, comma-separated.
    pub url: String,
    /// A `.creds` file (JWT + NKey seed), if the server wants one.
    pub credentials: Option<PathBuf>,
    /// Subject prefix (`herald`).
    pub prefix: String,
    /// Connection name shown in the server's monitoring.
    pub name: String,
}

/// A NATS-backed broker. Cheap to share; the connection lives on the hub runtime.
pub struct NatsBroker {
    client: Client,
    prefix: Arc<str>,
    sync_subject: String,
}

impl NatsBroker {
    /// Connects (retrying in the background until the server is reachable). Must be called on
    /// the hub runtime: async-nats spawns its connection task on the current runtime.
    pub async fn connect(opts: &NatsOptions) -> Result<Self, BrokerError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(&opts.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .subscription_capacity(256 * 1024)
            .event_callback(|event| async move {
                tracing::debug!(%event, "nats connection event");
            });
        if let Some(path) = &opts.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| BrokerError::Rejected(format!("{}: {e}", path.display())))?;
        }
        let urls: Vec<async_nats::ServerAddr> = opts
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| BrokerError::Rejected(format!("invalid NATS URL: {e}")))?;
        let client = options.connect(urls).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let nonce: u64 = rand::random();
        Ok(NatsBroker {
            client,
            prefix: Arc::from(opts.prefix.as_str()),
            sync_subject: format!("{}._sync.{nonce:x}", opts.prefix),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A request nobody answers: when its "no responders" reply arrives, the server has
    /// processed everything this connection sent before it, subscriptions included.
    async fn round_trip(client: &Client, subject: String) -> Result<(), BrokerError> {
        match client.request(subject, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BrokerError::Unavailable(format!("NATS did not answer: {e}"))),
        }
    }
}

/// Turns a NATS message into a delivery. Unknown headers are ignored.
pub fn delivery_from(msg: Message) -> Delivery {
    let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    Delivery {
        event_type: header(HEADER_TYPE).unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_owned()),
        from: header(HEADER_FROM),
        id: None,
        payload: msg.payload,
    }
}

/// Headers for an event published by Herald.
pub fn event_headers(event_type: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_TYPE, event_type);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    headers.insert(HEADER_PUBLISHED_AT, now.as_nanos().to_string().as_str());
    headers
}

impl Broker for NatsBroker {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        let client = self.client.clone();
        let subject = target.subject(&self.prefix, SubjectKind::Live);
        let sync = self.sync_subject.clone();
        async move {
            let sub = client.subscribe(subject).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            Self::round_trip(&client, sync).await?;
            Ok(Box::pin(sub.map(delivery_from)) as EventStream)
        }
        .boxed()
    }

    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        async move {
            let headers = event_headers(&event.event_type);
            for target in &targets {
                client
                    .publish_with_headers(
                        target.subject(&prefix, SubjectKind::Live),
                        headers.clone(),
                        event.payload.clone(),
                    )
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            }
            client.flush().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            Ok(Vec::new())
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
