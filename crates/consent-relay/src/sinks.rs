//! The one place that knows every concrete sink: how its `[sinks.NAME]` table is read, which
//! secrets it takes from the environment, which purposes it serves, and how it is built.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::sync::Arc;

use relay_delivery::Sink;
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink};
use relay_sink_newsletter::{NewsletterConfig, NewsletterSink};
use relay_sink_partner::{PartnerSink, PartnerSinkConfig};

/// The sinks this binary can run, by their `[sinks.NAME]` name.
pub const KNOWN: &[&str] = &["hubspot", "audiences", "newsletter", "partner"];

/// What the binary needs of a sink's own configuration.
pub trait SinkConfig: std::fmt::Debug + Send + Sync {
    /// The purposes that route to the sink.
    fn purposes(&self) -> BTreeSet<String>;
    /// Problems with the values, each `key: message` with the key relative to `[sinks.NAME]`.
    fn problems(&self) -> Vec<String>;
    fn build(&self) -> Result<Arc<dyn Sink>, String>;
}

/// Reads `[sinks.NAME]` (without `enabled`, `batch`, `retry`) into the sink's configuration and
/// applies its dedicated secret variables; `None` for an unknown name.
pub fn parse(
    name: &str,
    section: toml::Table,
    env: &[(String, String)],
) -> Option<Result<Arc<dyn SinkConfig>, String>> {
    let value = toml::Value::Table(section);
    let parsed: Result<Arc<dyn SinkConfig>, toml::de::Error> = match name {
        "hubspot" => value.try_into::<HubSpotConfig>().map(|mut c| {
            if let Some(token) = var(env, "CONSENT_RELAY_HUBSPOT_TOKEN") {
                c.token = Some(token);
            }
            Arc::new(c) as Arc<dyn SinkConfig>
        }),
        "audiences" => value.try_into::<AudiencesConfig>().map(|mut c| {
            for (audience, cfg) in c.audiences.iter_mut() {
                if let Some(token) = var(env, &relay_sink_audiences::token_env_var(audience)) {
                    cfg.set_token(token);
                }
            }
            Arc::new(c) as Arc<dyn SinkConfig>
        }),
        // Their secrets are per list / per partner: CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__<LIST>__API_KEY
        // and CONSENT_RELAY__SINKS__PARTNER__PARTNERS__<NAME>__SIGNING_SECRET.
        "newsletter" => value
            .try_into::<NewsletterConfig>()
            .map(|c| Arc::new(c) as Arc<dyn SinkConfig>),
        "partner" => value
            .try_into::<PartnerSinkConfig>()
            .map(|c| Arc::new(c) as Arc<dyn SinkConfig>),
        _ => return None,
    };
    Some(parsed.map_err(|e| format!("sinks.{name}: {e}")))
}

fn var(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Every sink crate reports `Invalid(problems)` or a client-construction error; this flattens both.
fn problems<P: Display, E: Display>(
    result: Result<(), E>,
    invalid: impl FnOnce(&E) -> Option<Vec<P>>,
) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(e) => match invalid(&e) {
            Some(list) => list.iter().map(ToString::to_string).collect(),
            None => vec![e.to_string()],
        },
    }
}

impl SinkConfig for HubSpotConfig {
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<String> {
        use relay_sink_hubspot::ConfigError::Invalid;
        problems(self.validate(), |e| match e {
            Invalid(list) => Some(list.clone()),
            _ => None,
        })
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        HubSpotSink::new(self.clone())
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
}

impl SinkConfig for AudiencesConfig {
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<String> {
        use relay_sink_audiences::ConfigError::Invalid;
        problems(self.validate(), |e| match e {
            Invalid(list) => Some(list.clone()),
            _ => None,
        })
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        AudiencesSink::new(self.clone())
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
}

impl SinkConfig for NewsletterConfig {
    fn purposes(&self) -> BTreeSet<String> {
        NewsletterConfig::purposes(self)
    }
    fn problems(&self) -> Vec<String> {
        use relay_sink_newsletter::ConfigError::Invalid;
        problems(self.validate(), |e| match e {
            Invalid(list) => Some(list.clone()),
            _ => None,
        })
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        NewsletterSink::new(self.clone())
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
}

impl SinkConfig for PartnerSinkConfig {
    fn purposes(&self) -> BTreeSet<String> {
        PartnerSinkConfig::purposes(self)
    }
    fn problems(&self) -> Vec<String> {
        use relay_sink_partner::ConfigError::Invalid;
        problems(self.validate(), |e| match e {
            Invalid(list) => Some(list.clone()),
            _ => None,
        })
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        PartnerSink::new(self.clone())
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
}
