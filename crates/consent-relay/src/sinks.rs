//! The one place that knows every concrete sink: how its `[sinks.NAME]` table is read, which
//! secrets it takes from the environment, which purposes it serves, and how it is built — as one
//! runtime sink per destination (HubSpot account, audience, list, partner), each consuming in its
//! own group, so that one destination's trouble never holds another's.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::deserialize_all;
use crate::ledger_report::Recipient;
use relay_delivery::{ConfigError, ConfigProblem, Sink};
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink};
use relay_sink_newsletter::{NewsletterConfig, NewsletterSink};
use relay_sink_partner::{PartnerSink, PartnerSinkConfig};

/// The sinks this binary can run, by their `[sinks.NAME]` name.
pub const KNOWN: &[&str] = &["hubspot", "audiences", "newsletter", "partner"];

/// A sink's `batch.max_events` unless configured. Under a backlog batches fill to it (they take only
/// messages already fetched, so a withdrawal on an idle relay still leaves alone and at once).
/// Larger batches mean fuller requests (Meta and Google take 10 000 identifiers, X 2 500, HubSpot
/// 100 inputs per call) and fewer ledger transactions, but every event in flight is held in
/// memory, per destination: at 10 000 four audiences held over 600 MiB (bench `throughput`).
pub fn default_max_events(name: &str) -> usize {
    match name {
        "audiences" => 2_500,
        "hubspot" | "newsletter" => 1_000,
        _ => 100,
    }
}

/// One destination of a sink, ready to run: the runtime sink and the purposes routed to it.
pub struct Built {
    pub sink: Arc<dyn Sink>,
    pub purposes: BTreeSet<String>,
}

/// What the binary needs of a sink's own configuration.
pub trait SinkConfig: std::fmt::Debug + Send + Sync {
    /// The purposes that route to the sink.
    fn purposes(&self) -> BTreeSet<String>;
    /// Each purpose with the key, relative to `[sinks.NAME]`, that names it: where a problem
    /// with the purpose is reported.
    fn purpose_keys(&self) -> Vec<(String, String)> {
        self.purposes()
            .into_iter()
            .map(|p| (format!("purposes.{p}"), p))
            .collect()
    }
    /// Problems with the values, each with its key relative to `[sinks.NAME]`.
    fn problems(&self) -> Vec<ConfigProblem>;
    /// The names of its destinations as the runtime knows them (consumer group suffix, ledger,
    /// metrics): `hubspot`, `audiences.<audience>`, `newsletter.<list>`, `partner.<partner>`.
    fn destinations(&self) -> Vec<String>;
    /// Who each destination is and what it receives, by destination name: what `ledger audit`
    /// tells a data subject (GDPR Art. 15(1)(c)).
    fn recipients(&self) -> Vec<(String, Recipient)>;
    /// The URL each destination sends to, by destination name (`config check --connect`).
    fn endpoints(&self) -> Vec<(String, String)>;
    fn build(&self) -> Result<Vec<Built>, String>;
    /// The concrete configuration, for commands that need more than running it (`reconcile`).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The host (and port) of `url`, without its path (which may hold a token) or user info (which
/// may hold a credential).
pub fn host(url: &str) -> &str {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    authority.rsplit('@').next().unwrap_or_default()
}

/// Reads `[sinks.NAME]` (without `enabled`, `batch`, `retry`) into the sink's configuration and
/// applies its dedicated secret variables; `None` for an unknown name.
pub fn parse(
    name: &str,
    section: toml::Table,
    env: &[(String, String)],
    set_by: &crate::config::SetBy,
) -> Option<Result<Arc<dyn SinkConfig>, Vec<String>>> {
    let mut problems = Vec::new();
    let prefix = format!("sinks.{name}");
    let parsed: Option<Arc<dyn SinkConfig>> = match name {
        "hubspot" => deserialize_all::<HubSpotConfig>(section, &prefix, set_by, &mut problems).map(
            |mut c| {
                if let Some(token) = var(env, "CONSENT_RELAY_HUBSPOT_TOKEN") {
                    c.token = Some(token.into());
                }
                Arc::new(c) as Arc<dyn SinkConfig>
            },
        ),
        "audiences" => deserialize_all::<AudiencesConfig>(section, &prefix, set_by, &mut problems)
            .map(|mut c| {
                // A token each, but four OAuth 1.0a credentials for X, each from its own
                // variable: CONSENT_RELAY_AUDIENCES_<NAME>_TOKEN, or …_CONSUMER_KEY,
                // …_CONSUMER_SECRET, …_ACCESS_TOKEN and …_ACCESS_TOKEN_SECRET.
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
        "newsletter" => {
            deserialize_all::<NewsletterConfig>(section, &prefix, set_by, &mut problems)
                .map(|c| Arc::new(c) as Arc<dyn SinkConfig>)
        }
        "partner" => deserialize_all::<PartnerSinkConfig>(section, &prefix, set_by, &mut problems)
            .map(|c| Arc::new(c) as Arc<dyn SinkConfig>),
        _ => return None,
    };
    Some(parsed.ok_or(problems))
}

/// A secret variable set but empty (compose's `${VAR:-}` of an unset one) counts as missing, so
/// the problem names the variable to set.
fn var(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.clone())
}

/// Every sink validates into the shared [`ConfigError`]: `Invalid` lists each problem with its key,
/// anything else is one problem as it stands.
fn problems(result: Result<(), ConfigError>) -> Vec<ConfigProblem> {
    match result {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(list)) => list,
        Err(e) => vec![ConfigProblem {
            key: String::new(),
            message: e.to_string(),
            missing_secret: false,
        }],
    }
}

fn built<S: Sink + 'static>(
    result: Result<Vec<S>, ConfigError>,
    purposes: impl Fn(&S) -> BTreeSet<String>,
) -> Result<Vec<Built>, String> {
    let sinks = result.map_err(|e| e.to_string())?;
    Ok(sinks
        .into_iter()
        .map(|s| Built {
            purposes: purposes(&s),
            sink: Arc::new(s),
        })
        .collect())
}

impl SinkConfig for HubSpotConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<ConfigProblem> {
        problems(self.validate())
    }
    fn destinations(&self) -> Vec<String> {
        vec!["hubspot".to_owned()]
    }
    fn endpoints(&self) -> Vec<(String, String)> {
        vec![("hubspot".to_owned(), self.base_url.clone())]
    }
    fn recipients(&self) -> Vec<(String, Recipient)> {
        let mut data = "email address, its email subscription status per purpose".to_owned();
        if self.purposes.values().any(|p| p.create_contact) {
            let properties: Vec<&str> = self.contact_properties.iter().map(|p| p.name()).collect();
            data.push_str(&format!(
                ", a CRM contact with: {} (on a grant)",
                properties.join(", ")
            ));
        }
        vec![(
            "hubspot".to_owned(),
            Recipient::of("HubSpot (CRM and email subscriptions)".to_owned(), data),
        )]
    }
    fn build(&self) -> Result<Vec<Built>, String> {
        let purposes = SinkConfig::purposes(self);
        built(HubSpotSink::new(self.clone()).map(|s| vec![s]), |_| {
            purposes.clone()
        })
    }
}

impl SinkConfig for AudiencesConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }
    fn problems(&self) -> Vec<ConfigProblem> {
        problems(self.validate())
    }
    fn destinations(&self) -> Vec<String> {
        self.audiences
            .keys()
            .map(|a| format!("audiences.{a}"))
            .collect()
    }
    fn endpoints(&self) -> Vec<(String, String)> {
        self.audiences
            .iter()
            .map(|(name, a)| (format!("audiences.{name}"), a.base_url().to_owned()))
            .collect()
    }
    fn recipients(&self) -> Vec<(String, Recipient)> {
        self.audiences
            .iter()
            .map(|(name, a)| {
                let (who, data) = a.platform().recipient();
                (format!("audiences.{name}"), Recipient::of(who, data))
            })
            .collect()
    }
    fn build(&self) -> Result<Vec<Built>, String> {
        built(
            AudiencesSink::per_audience(self.clone()),
            AudiencesSink::purposes,
        )
    }
}

impl SinkConfig for NewsletterConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn purposes(&self) -> BTreeSet<String> {
        NewsletterConfig::purposes(self)
    }
    fn problems(&self) -> Vec<ConfigProblem> {
        problems(self.validate())
    }
    fn destinations(&self) -> Vec<String> {
        self.lists
            .keys()
            .map(|l| format!("newsletter.{l}"))
            .collect()
    }
    fn endpoints(&self) -> Vec<(String, String)> {
        use relay_sink_newsletter::ListConfig;
        self.lists
            .iter()
            .filter_map(|(name, list)| {
                let url = match list {
                    ListConfig::Brevo(b) => Some(b.base_url.clone()),
                    ListConfig::Mailchimp(m) => m.effective_base_url(),
                };
                url.map(|u| (format!("newsletter.{name}"), u))
            })
            .collect()
    }
    fn recipients(&self) -> Vec<(String, Recipient)> {
        use relay_sink_newsletter::ListConfig;
        self.lists
            .iter()
            .map(|(name, list)| {
                let recipient = match list {
                    ListConfig::Brevo(b) => Recipient::of(
                        format!("Brevo (list {})", b.list_id),
                        "email address, membership of the list".to_owned(),
                    ),
                    ListConfig::Mailchimp(m) => Recipient::of(
                        format!("Mailchimp (audience {})", m.list_id),
                        "email address, its subscription status".to_owned(),
                    ),
                };
                (format!("newsletter.{name}"), recipient)
            })
            .collect()
    }
    fn build(&self) -> Result<Vec<Built>, String> {
        built(
            NewsletterSink::per_list(self.clone()),
            NewsletterSink::purposes,
        )
    }
}

impl SinkConfig for PartnerSinkConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn purposes(&self) -> BTreeSet<String> {
        PartnerSinkConfig::purposes(self)
    }
    fn purpose_keys(&self) -> Vec<(String, String)> {
        self.partners
            .iter()
            .map(|(name, p)| (format!("partners.{name}.purpose"), p.purpose.clone()))
            .collect()
    }
    fn problems(&self) -> Vec<ConfigProblem> {
        problems(self.validate())
    }
    fn destinations(&self) -> Vec<String> {
        self.partners
            .keys()
            .map(|p| format!("partner.{p}"))
            .collect()
    }
    fn endpoints(&self) -> Vec<(String, String)> {
        self.partners
            .iter()
            .map(|(name, p)| (format!("partner.{name}"), p.endpoint.clone()))
            .collect()
    }
    fn recipients(&self) -> Vec<(String, Recipient)> {
        self.partners
            .iter()
            .map(|(name, p)| {
                // The endpoint's host names the receiver; the path may hold a token.
                let host = host(&p.endpoint);
                let fields: Vec<&str> = p.fields.iter().map(|f| f.key()).collect();
                (
                    format!("partner.{name}"),
                    Recipient::of(
                        format!("partner {name} ({host})"),
                        format!(
                            "{} (on a grant); the subject id, purpose, notice version, the \
                             decision and its time (with every decision, withdrawals and \
                             erasures included)",
                            fields.join(", ")
                        ),
                    ),
                )
            })
            .collect()
    }
    fn build(&self) -> Result<Vec<Built>, String> {
        built(
            PartnerSink::per_partner(self.clone()),
            PartnerSink::purposes,
        )
    }
}
