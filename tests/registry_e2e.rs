//! The Confluent framing end to end: `publish` registers the schema and frames with its id; the
//! relay fetches the writer schema by id and decodes; an unknown id goes to the DLQ.

use consent_relay_e2e::*;
use relay_ledger::Status;
use relay_runtime::dead_letter::header;
use relay_testkit::broker;
use relay_testkit::registry::FakeRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_framed_with_a_registry_schema_id_are_decoded_and_unknown_ids_dead_lettered() {
    let registry = FakeRegistry::start().await;
    let mut h = Harness::new().await;
    h.schema_registry_url = Some(registry.url());

    let ev = grant("rita", T0, "newsletter");
    h.publish(std::slice::from_ref(&ev)).await;
    let ids = registry.versions(&format!("{}-value", h.topic));
    assert_eq!(ids.len(), 1, "publish registered the ConsentGranted schema");

    // A Confluent frame naming a schema id the registry does not have.
    let mut unknown = vec![0u8];
    unknown.extend_from_slice(&999u32.to_be_bytes());
    unknown.extend_from_slice(b"\x02\x04");
    broker::publish_raw(&broker::producer(), &h.topic, "rita", &unknown).await;

    let relay = h.start();
    eventually("the framed event is applied", PATIENCE, || async {
        h.report("rita")
            .await
            .deliveries
            .iter()
            .any(|d| d.key.event_id == ev.event_id && d.status == Status::Applied)
            .then_some(())
    })
    .await;
    assert_eq!(
        h.fake
            .subscription_status(&email_of("rita"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    let dlq = broker::read_all(&h.dlq_topic, 1, PATIENCE).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(header::ERROR_CODE), Some("unknown_schema"));
    assert!(dlq[0]
        .header(header::ERROR_MESSAGE)
        .unwrap()
        .contains("999"));
    relay.stop().await;
}
