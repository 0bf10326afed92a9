use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_delivery::driver::{self, Answer, Single, Transport};
use relay_delivery::{
    body_excerpt, classify_status, BoxFuture, ConfigError, ConfigProblem, Destination, Outcome,
    Secret, Sink, SinkItem,
};

use crate::config::{secret_key, PartnerConfig, PartnerSinkConfig};
use crate::request::{self, Message};

/// The partner sink: hands leads to partners and tells them about withdrawals and erasures, as
/// Standard Webhooks signed with each partner's secret.
pub struct PartnerSink {
    /// `partner`, or `partner.<name>` for a sink of one partner.
    name: String,
    partners: Vec<Partner>,
}

/// One configured partner with its HTTP front.
struct Partner {
    name: String,
    config: PartnerConfig,
    /// The HMAC key behind the `whsec_` secret.
    key: Vec<u8>,
    /// Never follows redirects: Standard Webhooks counts a 3xx as a failure, and a redirect would
    /// carry personal data to an address nobody configured.
    http: reqwest::Client,
    destination: Destination,
}

impl PartnerSink {
    /// Validates `config` and builds one HTTP front (rate limit, concurrency) per partner.
    pub fn new(config: PartnerSinkConfig) -> Result<PartnerSink, ConfigError> {
        config.validate()?;
        PartnerSink::build("partner".to_owned(), config)
    }

    /// Validates `config` and builds one sink per partner, named `partner.<name>`: a partner that
    /// is down or answers 410 pauses only its own hand-offs.
    pub fn per_partner(config: PartnerSinkConfig) -> Result<Vec<PartnerSink>, ConfigError> {
        config.validate()?;
        config
            .partners
            .iter()
            .map(|(name, partner)| {
                let only = PartnerSinkConfig {
                    partners: [(name.clone(), partner.clone())].into(),
                };
                PartnerSink::build(format!("partner.{name}"), only)
            })
            .collect()
    }

    /// The purposes that route to this sink: its partners' gating purposes.
    pub fn purposes(&self) -> std::collections::BTreeSet<String> {
        self.partners
            .iter()
            .map(|p| p.config.purpose.clone())
            .collect()
    }

    fn build(name: String, config: PartnerSinkConfig) -> Result<PartnerSink, ConfigError> {
        let mut partners = Vec::with_capacity(config.partners.len());
        for (name, partner) in config.partners {
            // validate() has checked that the secret is there and decodes.
            let key = secret_key(partner.signing_secret.as_ref().map_or("", Secret::expose))
                .map_err(|message| {
                    ConfigError::Invalid(vec![ConfigProblem {
                        key: format!("partners.{name}.signing_secret"),
                        message,
                        missing_secret: false,
                    }])
                })?;
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_millis(partner.limits.request_timeout_ms))
                .build()
                .map_err(ConfigError::Client)?;
            let destination =
                Destination::new(partner.limits.clone()).map_err(ConfigError::Client)?;
            partners.push(Partner {
                name,
                config: partner,
                key,
                http,
                destination,
            });
        }
        Ok(PartnerSink { name, partners })
    }

    /// One notice per (item, partner it concerns), in item order; an item no partner is for is
    /// settled as a configuration gap.
    fn plan(&self, items: &[SinkItem]) -> (Vec<Option<Outcome>>, Vec<Notice>) {
        let mut settled = vec![None; items.len()];
        let mut notices = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let before = notices.len();
            for (p, partner) in self.partners.iter().enumerate() {
                if request::concerns(item, &partner.config) {
                    notices.push(Single {
                        lane: p,
                        item: index,
                        // Held back per partner: each partner keeps its own order.
                        person: format!("{p}/{}", item.event.subject_id),
                        call: request::message(item, &partner.config),
                    });
                }
            }
            if notices.len() == before {
                settled[index] = Some(Outcome::permanent(format!(
                    "no partner is configured for purpose {:?}",
                    item.change.target_key()
                )));
            }
        }
        (settled, notices)
    }
}

/// A notice to one partner about one item, or why it could not be built.
type Notice = Single<Result<Message, Outcome>>;

impl Transport for PartnerSink {
    /// The partner is the lane. A message that could not be built still takes its place in the
    /// order: it fails without being sent, and holds back that person's later notices to the
    /// partner like any other failure.
    type Request = Notice;

    fn who(&self, _lane: usize) -> &str {
        "the partner"
    }

    fn send<'a>(&'a self, notice: &'a Notice) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            match &notice.call {
                Err(outcome) => Answer::whole(outcome.clone(), 1).lane_goes_on(),
                Ok(message) => Answer::whole(self.partners[notice.lane].send(message).await, 1),
            }
        })
    }
}

impl Partner {
    /// Signs and sends one message and maps the answer to its outcome.
    async fn send(&self, message: &Message) -> Outcome {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let request = self
            .http
            .post(&self.config.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                request::signature(&self.key, &message.id, timestamp, &message.body),
            )
            .body(message.body.clone());
        let reply = match self.destination.send(request).await {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        tracing::debug!(
            sink = "partner",
            partner = %self.name,
            kind = message.kind,
            event_id = %message.id,
            status = reply.status,
            "partner answered"
        );
        // 410 comes back refused: the partner asks us to stop (Standard Webhooks), which opens
        // the runtime's circuit until an operator acts, instead of retrying forever.
        classify_status(
            reply.status,
            reply.header("retry-after"),
            body_excerpt(&reply.body),
        )
    }
}

impl Sink for PartnerSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Leads carry whatever allow-listed fields the event has; notices need only `subject_id`.
    fn requires_email(&self) -> bool {
        false
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        let (settled, notices) = self.plan(items);
        Box::pin(driver::deliver(self, settled, vec![notices]))
    }

    fn destinations(&self) -> Vec<&Destination> {
        self.partners.iter().map(|p| &p.destination).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_or_a_refusal_blocks_the_partner_for_the_delivery() {
        let limited = classify_status(429, Some("4"), "slow");
        assert_eq!(
            limited.unsent_after("the partner"),
            Some(Outcome::Unavailable {
                after: Some(Duration::from_secs(4)),
                reason: "not sent: the partner was unavailable earlier in this delivery \
                    (HTTP 429: slow)"
                    .into()
            })
        );
        assert!(matches!(
            classify_status(410, None, "gone").unsent_after("the partner"),
            Some(Outcome::Refused { .. })
        ));
        assert_eq!(
            classify_status(503, None, "x").unsent_after("the partner"),
            None
        );
        assert_eq!(
            Outcome::retryable("held back").unsent_after("the partner"),
            None
        );
    }
}
