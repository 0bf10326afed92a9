//! The `[ingest]` section. Secrets are [`Secret`]s: never shown by `Debug`, so a config dump or a
//! panic message cannot leak them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use relay_delivery::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Where the webhook server listens.
    pub listen: SocketAddr,
    /// The URL the vendors call, up to (not including) `/webhooks/...`: HubSpot signs the URL as
    /// it called it, which behind an Ingress or proxy is not what this process sees.
    pub public_url: String,
    /// Topic the events go to; default the first of `kafka.topics`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Larger requests are refused (413) before anything is parsed.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A vendor's notice this close (either way, vendor clock against ours) to a withdrawal the
    /// relay was delivering to that vendor for the same person is taken for that delivery's echo,
    /// and not published for the purposes the relay was withdrawing. Longer than the vendors'
    /// webhook delays.
    #[serde(default = "default_echo_window_ms")]
    pub echo_window_ms: u64,
    #[serde(default)]
    pub hubspot: Option<HubSpotIngest>,
    #[serde(default)]
    pub mailchimp: Option<MailchimpIngest>,
    #[serde(default)]
    pub brevo: Option<BrevoIngest>,
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_echo_window_ms() -> u64 {
    5 * 60 * 1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotIngest {
    /// The app's client secret, the key of the v3 signature (`CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET`).
    #[serde(default)]
    pub client_secret: Secret,
    /// A token allowed to read contacts (`crm.objects.contacts.read`), because HubSpot's webhooks
    /// name a contact by id only (`CONSENT_RELAY_INGEST_HUBSPOT_TOKEN`).
    #[serde(default)]
    pub token: Secret,
    #[serde(default = "default_hubspot_api")]
    pub api_base_url: String,
    /// Older signed requests are refused (HubSpot: 5 minutes).
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    /// Subscription type id → the purposes an opt-out of it withdraws.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, Vec<String>>,
}

fn default_hubspot_api() -> String {
    "https://api.hubapi.com".to_owned()
}

fn default_max_age_ms() -> u64 {
    5 * 60 * 1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailchimpIngest {
    /// The last segment of the webhook URL; Mailchimp does not sign its webhooks
    /// (`CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET`). May stay unset with `poll`: the webhook
    /// route is then not served.
    #[serde(default)]
    pub path_secret: Secret,
    /// Audience (list) id → the purposes an unsubscribe from it withdraws.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<String>>,
    /// `ingest --poll`: read each list's unsubscribed members instead of (or besides) webhooks.
    #[serde(default)]
    pub poll: Option<MailchimpPoll>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailchimpPoll {
    /// A Marketing API key that may read the lists (`CONSENT_RELAY_INGEST_MAILCHIMP_API_KEY`).
    #[serde(default)]
    pub api_key: Secret,
    /// Default `https://<dc>.api.mailchimp.com/3.0`, `<dc>` from the key's suffix.
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Time between the end of one poll and the start of the next.
    #[serde(default = "default_poll_interval_ms")]
    pub interval_ms: u64,
}

fn default_poll_interval_ms() -> u64 {
    5 * 60 * 1000
}

impl MailchimpPoll {
    /// The configured base URL, else the key's data center's.
    pub fn base_url(&self) -> Option<String> {
        if let Some(url) = &self.api_base_url {
            return Some(url.trim_end_matches('/').to_owned());
        }
        let (_, dc) = self.api_key.expose().trim().rsplit_once('-')?;
        // Letters and digits only, so that a malformed key cannot point requests elsewhere.
        (!dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| format!("https://{dc}.api.mailchimp.com/3.0"))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrevoAuth {
    Bearer,
    Basic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrevoIngest {
    /// How the webhook was configured at Brevo to authenticate.
    pub auth: BrevoAuth,
    /// For `auth = "bearer"` (`CONSENT_RELAY_INGEST_BREVO_TOKEN`).
    #[serde(default)]
    pub token: Secret,
    /// For `auth = "basic"`.
    #[serde(default)]
    pub username: String,
    /// For `auth = "basic"` (`CONSENT_RELAY_INGEST_BREVO_PASSWORD`). Kept as given, surrounding
    /// spaces included: a password may have them.
    #[serde(default, deserialize_with = "Secret::deserialize_verbatim")]
    pub password: Secret,
    /// List id → the purposes an unsubscribe from it withdraws.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<String>>,
    /// The purposes of an event that names no configured list (a spam complaint, an unsubscribe
    /// from every list).
    #[serde(default)]
    pub purposes: Vec<String>,
}

/// Environment variables that carry the secrets, applied over the file.
pub const ENV_SECRETS: [&str; 6] = [
    "CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET",
    "CONSENT_RELAY_INGEST_HUBSPOT_TOKEN",
    "CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET",
    "CONSENT_RELAY_INGEST_BREVO_TOKEN",
    "CONSENT_RELAY_INGEST_BREVO_PASSWORD",
    "CONSENT_RELAY_INGEST_MAILCHIMP_API_KEY",
];

impl IngestConfig {
    /// Takes the secrets of [`ENV_SECRETS`] from `env`; one set but empty (compose's `${VAR:-}`)
    /// counts as unset.
    pub fn apply_env(&mut self, env: &[(String, String)]) {
        let raw = |name: &str| {
            env.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        let get = |name: &str| raw(name).map(Secret::new);
        if let Some(h) = &mut self.hubspot {
            if let Some(s) = get(ENV_SECRETS[0]) {
                h.client_secret = s;
            }
            if let Some(s) = get(ENV_SECRETS[1]) {
                h.token = s;
            }
        }
        if let Some(m) = &mut self.mailchimp {
            if let Some(s) = get(ENV_SECRETS[2]) {
                m.path_secret = s;
            }
            if let (Some(p), Some(s)) = (&mut m.poll, get(ENV_SECRETS[5])) {
                p.api_key = s;
            }
        }
        if let Some(b) = &mut self.brevo {
            if let Some(s) = get(ENV_SECRETS[3]) {
                b.token = s;
            }
            if let Some(v) = raw(ENV_SECRETS[4]) {
                b.password = Secret::verbatim(v);
            }
        }
    }

    /// Every problem, each naming its key; `known` are the configured purposes.
    pub fn problems(&self, known: &std::collections::BTreeSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.public_url.starts_with("https://") || self.public_url.starts_with("http://")) {
            out.push("ingest.public_url: must start with https:// (or http:// for tests)".into());
        }
        if self.hubspot.is_none() && self.mailchimp.is_none() && self.brevo.is_none() {
            out.push("ingest: configure at least one of hubspot, mailchimp, brevo".into());
        }
        let mut purposes = |key: String, list: &[String]| {
            if list.is_empty() {
                out.push(format!("{key}: names no purpose"));
            }
            for p in list {
                if !known.contains(p) {
                    out.push(format!(
                        "{key}: purpose {p:?} is not in the [purposes] table"
                    ));
                }
            }
        };
        if let Some(h) = &self.hubspot {
            for (id, list) in &h.subscriptions {
                purposes(format!("ingest.hubspot.subscriptions.{id}"), list);
            }
        }
        if let Some(m) = &self.mailchimp {
            for (id, list) in &m.lists {
                purposes(format!("ingest.mailchimp.lists.{id}"), list);
            }
        }
        if let Some(b) = &self.brevo {
            for (id, list) in &b.lists {
                purposes(format!("ingest.brevo.lists.{id}"), list);
            }
            if !b.purposes.is_empty() {
                purposes("ingest.brevo.purposes".into(), &b.purposes);
            }
        }
        if let Some(h) = &self.hubspot {
            if h.client_secret.is_blank() {
                out.push(format!(
                    "ingest.hubspot.client_secret: missing (set {})",
                    ENV_SECRETS[0]
                ));
            } else if let Some(why) = h.client_secret.malformed() {
                out.push(format!("ingest.hubspot.client_secret: {why}"));
            }
            if h.token.is_blank() {
                out.push(format!(
                    "ingest.hubspot.token: missing (set {})",
                    ENV_SECRETS[1]
                ));
            } else if let Some(why) = h.token.malformed() {
                out.push(format!("ingest.hubspot.token: {why}"));
            }
        }
        if let Some(m) = &self.mailchimp {
            // Short secrets in a URL can be guessed; 32 characters is a UUID without hyphens.
            let polled_only = m.poll.is_some() && m.path_secret.is_blank();
            if let (Some(why), false) = (m.path_secret.malformed(), m.path_secret.is_blank()) {
                out.push(format!("ingest.mailchimp.path_secret: {why}"));
            }
            if m.path_secret.expose().len() < 32 && !polled_only {
                out.push(format!(
                    "ingest.mailchimp.path_secret: at least 32 characters (set {})",
                    ENV_SECRETS[2]
                ));
            }
            if let Some(p) = &m.poll {
                if p.api_key.is_blank() {
                    out.push(format!(
                        "ingest.mailchimp.poll.api_key: missing (set {})",
                        ENV_SECRETS[5]
                    ));
                } else if let Some(why) = p.api_key.malformed() {
                    out.push(format!("ingest.mailchimp.poll.api_key: {why}"));
                } else if p.base_url().is_none() {
                    out.push("ingest.mailchimp.poll.api_base_url: missing, and the API key names no data center (<key>-<dc>)".into());
                }
                if let Some(url) = &p.api_base_url {
                    // The key goes in every request's Authorization header.
                    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                        .iter()
                        .any(|l| url.starts_with(l));
                    if !url.starts_with("https://") && !local {
                        out.push(format!(
                            "ingest.mailchimp.poll.api_base_url: {url:?} must be https:// (the API key travels with every request; http:// only to this machine, for tests)"
                        ));
                    }
                }
                if p.interval_ms < 10_000 {
                    out.push("ingest.mailchimp.poll.interval_ms: at least 10000 (Mailchimp allows 10 connections per key; polls share them with the newsletter sink)".into());
                }
                if m.lists.is_empty() {
                    out.push("ingest.mailchimp.lists: poll needs at least one list".into());
                }
            }
        }
        if let Some(b) = &self.brevo {
            match b.auth {
                BrevoAuth::Bearer if b.token.is_blank() => out.push(format!(
                    "ingest.brevo.token: missing for auth = \"bearer\" (set {})",
                    ENV_SECRETS[3]
                )),
                BrevoAuth::Basic if b.username.is_empty() || b.password.is_blank() => {
                    out.push(format!(
                        "ingest.brevo.username/password: missing for auth = \"basic\" (set {})",
                        ENV_SECRETS[4]
                    ))
                }
                _ => {}
            }
        }
        out
    }
}
