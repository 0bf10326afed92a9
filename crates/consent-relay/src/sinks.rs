//! The one place that knows every concrete sink: how its `[sinks.NAME]` table is read, which
//! secrets it takes from the environment, which purposes it serves, and how it is built.

use std::collections::BTreeSet;
use std::sync::Arc;

use relay_delivery::{ConfigError, Sink};
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
            // A token each, but four OAuth 1.0a credentials for X, each from its own variable:
            // CONSENT_RELAY_AUDIENCES_<NAME>_TOKEN, or …_CONSUMER_KEY, …_CONSUMER_SECRET,
            // …_ACCESS_TOKEN and …_ACCESS_TOKEN_SECRET.
            for (audience, cfg) in c.audiences.iter_mut() {
                for field in cfg.credential_fields() {
                    let name = relay_sink_audiences::credential_env_var(audience, field);
                    if let Some(value) = var(env, &name) {
                        cfg.set_credential(field, value);
                    }
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

/// Every sink validates into the shared [`ConfigError`]: `Invalid` lists each problem with its key,
/// anything else is one problem as it stands.
fn problems(result: Result<(), ConfigError>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(list)) => list.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn built<S: Sink + 'static>(result: Result<S, ConfigError>) -> Result<Arc<dyn Sink>, String> {
    result
        .map(|s| Arc::new(s) as Arc<dyn Sink>)
        .map_err(|e| e.to_string())
}

impl SinkConfig for HubSpotConfig {
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<String> {
        problems(self.validate())
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        built(HubSpotSink::new(self.clone()))
    }
}

impl SinkConfig for AudiencesConfig {
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<String> {
        problems(self.validate())
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        built(AudiencesSink::new(self.clone()))
    }
}

impl SinkConfig for NewsletterConfig {
    fn purposes(&self) -> BTreeSet<String> {
        NewsletterConfig::purposes(self)
    }
    fn problems(&self) -> Vec<String> {
        problems(self.validate())
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        built(NewsletterSink::new(self.clone()))
    }
}

impl SinkConfig for PartnerSinkConfig {
    fn purposes(&self) -> BTreeSet<String> {
        PartnerSinkConfig::purposes(self)
    }
    fn problems(&self) -> Vec<String> {
        problems(self.validate())
    }
    fn build(&self) -> Result<Arc<dyn Sink>, String> {
        built(PartnerSink::new(self.clone()))
    }
}
