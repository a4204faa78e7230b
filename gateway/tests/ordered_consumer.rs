//! The hub refills a gap in live delivery with an ordered consumer of the history stream,
//! started after the last event it sent (`broker/nats/replay.rs`). The NATS client recreates
//! an ordered consumer that the server lost (a node loss, a stream leader's election). One lost
//! before it delivered anything must start again where it was asked to: from the stream's first
//! event instead, the refill would hand out old events in place of the gap, and the gap's
//! events would be lost (vendor/README.md).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use herald_testkit::Nats;

#[tokio::test]
async fn an_ordered_consumer_lost_before_its_first_event_starts_again_where_it_was_asked_to() {
    let nats = Nats::start();
    let js = jetstream::new(nats.client().await);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "GAP".into(),
            subjects: vec!["gap.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for n in 1..=10 {
        js.publish(format!("gap.{n}"), n.to_string().into()).await.unwrap().await.unwrap();
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: vec!["gap.>".into()],
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: 6 },
            ..Default::default()
        })
        .await
        .unwrap();
    // The server loses it before it delivered anything.
    let name = consumer.cached_info().name.clone();
    stream.delete_consumer(&name).await.unwrap();

    let mut messages = consumer.messages().await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the recreated consumer delivers within 30 s")
            .expect("the consumer's messages go on")
            .unwrap();
        seqs.push(message.info().unwrap().stream_sequence);
    }
    assert_eq!(seqs, [6, 7, 8, 9, 10], "the gap, from where the consumer was asked to start");
}
