//! A round trip that confirms what a connection sent before it has been processed, at its own
//! server and at the node leading the stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, RequestErrorKind};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::broker::BrokerError;

/// Confirms that what this connection sent before (its subscriptions above all) has been
/// processed by its own server and, with history on, by the node leading the stream too.
///
/// The second half matters in a NATS cluster. A subscription reaches the gateway's own node at
/// once and the other nodes a moment later, over the routes; an event that the stream's leader
/// republishes in that moment never reaches the gateway, and nothing would tell it so. So the
/// confirmation is a publish into the stream that the leader refuses (`Nats-Expected-Stream`
/// names no stream) and answers without storing anything: a node sends a route both the
/// interest and the messages of one account over the same connection, in order, so once the
/// leader has answered it knows of every subscription sent before, and republishes every later
/// event to this gateway. What was stored before is read from the leader by the resume, or the
/// first cursor, that follows the join. Without a stream leader (an election) nothing answers,
/// and nothing is republished either: the "no responders" reply then confirms the own node.
/// Without history, the request goes to a subject nobody serves, for that same reply.
///
/// One round trip answers for every caller that was waiting when it was sent, and round trips
/// are sent at least [`SPACING`] apart, so a burst of connections subscribing to their users'
/// subjects costs one request per `SPACING`, not one per connection.
pub(super) struct Barrier {
    client: Client,
    subject: String,
    /// Sent with a refusal header into the stream (history on), or plainly (history off).
    barrier: bool,
    waiting: parking_lot::Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    callers: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// A task is sending round trips until nobody waits.
    running: bool,
    /// When the last round trip was sent.
    last_sent: Option<Instant>,
}

/// The least time between two round trips. A caller that comes within it after a round trip
/// was sent waits for the next one with everyone else who comes meanwhile; one that comes later
/// is sent at once. Each round trip is a request the stream's leader answers (a JetStream
/// publish it refuses): during a burst of connections, one every 2 ms instead of one per
/// round-trip time took about 6 µs (9%) off each connection's CPU, the gateway's and
/// nats-server's (docs/benchmarks.md), for 2–3 ms more at most before a new stream's first
/// byte (the timer's resolution is 1 ms).
pub(super) const SPACING: Duration = Duration::from_millis(2);

/// What a confirmation's `Nats-Expected-Stream` names: not a valid stream name (it has a dot),
/// so it never matches the stream, which refuses the message unstored.
const BARRIER_EXPECTED_STREAM: &str = "herald.barrier";

impl Barrier {
    pub(super) fn new(client: Client, prefix: &str, history: bool) -> Self {
        let subject = if history {
            format!("{prefix}.events._barrier")
        } else {
            format!("{prefix}._sync.{:x}", rand::random::<u64>())
        };
        Barrier { client, subject, barrier: history, waiting: Default::default() }
    }

    /// Resolves once what this connection sent before the call has been processed (see above).
    pub(super) async fn pass(self: &Arc<Self>) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock();
            waiting.callers.push(tx);
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("NATS connection closed".into())))
    }

    async fn run(&self) {
        loop {
            let next = self.waiting.lock().last_sent.map(|sent| sent + SPACING);
            if let Some(next) = next.filter(|next| *next > Instant::now()) {
                tokio::time::sleep_until(next).await;
            }
            // Everyone in this batch was queued before the request below is sent.
            let batch = {
                let mut waiting = self.waiting.lock();
                if waiting.callers.is_empty() {
                    waiting.running = false;
                    return;
                }
                waiting.last_sent = Some(Instant::now());
                std::mem::take(&mut waiting.callers)
            };
            let result = self.round_trip().await;
            for caller in batch {
                let _ = caller.send(result.clone());
            }
        }
    }

    async fn round_trip(&self) -> Result<(), BrokerError> {
        let sent = if self.barrier {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_EXPECTED_STREAM, BARRIER_EXPECTED_STREAM);
            self.client.request_with_headers(self.subject.clone(), headers, Bytes::new()).await
        } else {
            self.client.request(self.subject.clone(), Bytes::new()).await
        };
        match sent {
            Ok(reply) => {
                if self.barrier && !reply.payload.windows(7).any(|w| w == b"\"error\"") {
                    // A server that ignored the header stored the message. Never seen; said
                    // loudly, since it would leave a stray message in the history.
                    tracing::error!(subject = %self.subject, "the stream stored a confirmation it should have refused");
                }
                Ok(())
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BrokerError::Unavailable(format!("NATS did not answer: {e}"))),
        }
    }
}
