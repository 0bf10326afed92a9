use std::collections::{BTreeMap, BTreeSet};

use relay_delivery::{ConfigError, ConfigProblems, DestinationConfig, Secret};
use serde::Deserialize;

/// The `[sinks.newsletter]` section of the config file.
///
/// Assumption the whole sink rests on: a grant of a purpose that maps to a list here is the
/// *confirmed* double opt-in (the upstream form sent the confirmation mail and the person clicked
/// it), so adding the address to the list at once is lawful. A purpose whose grant is only the
/// first step of a double opt-in must not be mapped to a list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsletterConfig {
    /// Consent purpose → the names of the lists (keys of `lists`) that a grant adds the address to
    /// and a withdrawal removes it from. A list may belong to one purpose only: its membership is
    /// that purpose's consent, and a withdrawal of one purpose must not end another's.
    #[serde(default)]
    pub purposes: BTreeMap<String, Vec<String>>,
    /// The lists by name (lowercase letters, digits and `_`, so that
    /// `CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__<NAME>__API_KEY` can set a key). A global
    /// unsubscribe or an erasure acts on every list here, whether or not a purpose names it.
    #[serde(default)]
    pub lists: BTreeMap<String, ListConfig>,
}

/// One newsletter list and the provider that holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ListConfig {
    /// `provider = "brevo"`: a Brevo contact list.
    Brevo(BrevoList),
    /// `provider = "mailchimp"`: a Mailchimp audience.
    Mailchimp(MailchimpList),
}

/// A Brevo contact list (docs/vendors/brevo.md §6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrevoList {
    /// Where the Brevo API lives, `/v3` included; tests point this at a fake.
    #[serde(default = "default_brevo_base_url")]
    pub base_url: String,
    /// Brevo API key (`xkeysib-…`), sent as the `api-key` header. Normally left out of the file
    /// and set through the environment.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The numeric id of the list (Contacts → Lists).
    pub list_id: i64,
    /// Rate limit and concurrency of the Brevo account. The default, 10 requests per second, is
    /// the `/v3/contacts` limit of the general tier; each key set overrides only itself. Lists of
    /// one account each get their own limiter, so split the account's limit between them.
    #[serde(
        default = "default_brevo_limits",
        deserialize_with = "brevo_limits_with_overrides"
    )]
    pub limits: DestinationConfig,
}

/// A Mailchimp audience (docs/vendors/mailchimp.md §6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailchimpList {
    /// Where the Marketing API lives, `/3.0` included. Unset: `https://<dc>.api.mailchimp.com/3.0`
    /// with the data center `<dc>` taken from the key's `-<dc>` suffix. Tests point this at a fake.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Mailchimp API key (`<hex>-<dc>`), sent as the password of HTTP Basic auth. Normally left out
    /// of the file and set through the environment.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The audience id (Audience → Settings → Audience name and defaults).
    pub list_id: String,
    /// Concurrency of the Mailchimp account. Mailchimp allows 10 connections at once per account
    /// and has no published request rate, hence the default of 10 concurrent requests and no
    /// window. Lists of one account each get their own limiter, so split the 10 between them.
    #[serde(
        default = "default_mailchimp_limits",
        deserialize_with = "mailchimp_limits_with_overrides"
    )]
    pub limits: DestinationConfig,
}

fn default_brevo_base_url() -> String {
    "https://api.brevo.com/v3".to_owned()
}

fn default_brevo_limits() -> DestinationConfig {
    DestinationConfig {
        max_requests_per_window: Some(10),
        window_ms: 1_000,
        ..DestinationConfig::default()
    }
}

fn default_mailchimp_limits() -> DestinationConfig {
    DestinationConfig {
        max_concurrency: 10,
        ..DestinationConfig::default()
    }
}

fn brevo_limits_with_overrides<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, default_brevo_limits())
}

fn mailchimp_limits_with_overrides<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, default_mailchimp_limits())
}

impl NewsletterConfig {
    /// The purposes that route to this sink.
    pub fn purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }

    /// This configuration narrowed to one list: that list alone, and the purposes that route to
    /// it. Each list is its own destination with its own consumer group, so that one provider's
    /// pause never holds another's.
    pub fn only(&self, list: &str) -> NewsletterConfig {
        NewsletterConfig {
            purposes: self
                .purposes
                .iter()
                .filter(|(_, lists)| lists.iter().any(|l| l == list))
                .map(|(p, _)| (p.clone(), vec![list.to_owned()]))
                .collect(),
            lists: self
                .lists
                .iter()
                .filter(|(name, _)| *name == list)
                .map(|(n, l)| (n.clone(), l.clone()))
                .collect(),
        }
    }

    /// Checks everything that can be checked without calling a provider and reports all problems
    /// at once, so that one start attempt shows every mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = ConfigProblems::default();

        if self.lists.is_empty() {
            problems.push("lists", "configure at least one list");
        }
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (purpose, lists) in &self.purposes {
            let key = format!("purposes.{purpose}");
            if lists.is_empty() {
                problems.push(key.clone(), "must name at least one list");
            }
            for list in lists {
                if !self.lists.contains_key(list) {
                    problems.push(
                        key.clone(),
                        format!("names {list:?}, which is not under lists"),
                    );
                }
                if let Some(other) = owner.insert(list, purpose) {
                    let message = if other == purpose {
                        format!("names {list:?} twice")
                    } else {
                        format!(
                            "names {list:?}, which purpose {other:?} names too; a list can serve \
                             one purpose only"
                        )
                    };
                    problems.push(key.clone(), &message);
                }
            }
        }
        for (name, list) in &self.lists {
            let key = |field: &str| format!("lists.{name}.{field}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                problems.push(
                    format!("lists.{name}"),
                    "list names may hold only a-z, 0-9 and _ (so that an environment variable can \
                     name them)",
                );
            }
            let (base_url, api_key, limits) = match list {
                ListConfig::Brevo(b) => {
                    if b.list_id <= 0 {
                        problems.push(key("list_id"), "must be a positive number");
                    }
                    (Some(b.base_url.as_str()), &b.api_key, &b.limits)
                }
                ListConfig::Mailchimp(m) => {
                    if m.list_id.is_empty() || !m.list_id.chars().all(|c| c.is_ascii_alphanumeric())
                    {
                        problems.push(
                            key("list_id"),
                            "must be a Mailchimp audience id (letters and digits)",
                        );
                    }
                    if m.base_url.is_none()
                        && m.api_key.is_some()
                        && data_center(m.api_key.as_ref().map_or("", Secret::expose)).is_none()
                    {
                        problems.push(
                            key("api_key"),
                            "does not end in -<data center> (e.g. -us6); set base_url instead",
                        );
                    }
                    (m.base_url.as_deref(), &m.api_key, &m.limits)
                }
            };
            if let Some(base_url) = base_url {
                match reqwest::Url::parse(base_url) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                    Ok(_) => problems.push(key("base_url"), "must be an http or https URL"),
                    Err(_) => problems.push(key("base_url"), "is not a URL"),
                }
            }
            match api_key {
                Some(api_key) if !api_key.is_blank() => {
                    if let Some(why) = api_key.malformed() {
                        problems.push(key("api_key"), why);
                    }
                }
                _ => problems.push_missing_secret(
                    key("api_key"),
                    format!(
                        "missing; set CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__{}__API_KEY",
                        name.to_uppercase()
                    ),
                ),
            }
            for p in limits.problems() {
                problems.push(key("limits"), &p);
            }
        }

        problems.into_result()
    }
}

impl MailchimpList {
    /// `base_url`, or the one the key's data center implies.
    pub fn effective_base_url(&self) -> Option<String> {
        match &self.base_url {
            Some(url) => Some(url.clone()),
            None => data_center(self.api_key.as_ref()?.expose())
                .map(|dc| format!("https://{dc}.api.mailchimp.com/3.0")),
        }
    }
}

/// The data center a Mailchimp key names after its last `-`; only letters and digits, so that a
/// malformed key cannot redirect requests to another host.
fn data_center(api_key: &str) -> Option<&str> {
    let (_, dc) = api_key.trim().rsplit_once('-')?;
    (!dc.is_empty() && dc.chars().all(|c| c.is_ascii_alphanumeric())).then_some(dc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NewsletterConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    const BOTH: &str = r#"{
        "purposes": {"newsletter": ["main"], "product_news": ["product"]},
        "lists": {
            "main": {"provider": "brevo", "api_key": "xkeysib-1", "list_id": 7},
            "product": {"provider": "mailchimp", "api_key": "0123abcd-us6", "list_id": "a1b2c3"}
        }
    }"#;

    #[test]
    fn a_limits_key_overrides_only_itself() {
        let c = parse(
            r#"{"purposes": {"newsletter": ["main"]},
                "lists": {"main": {"provider": "brevo", "api_key": "k", "list_id": 7,
                                   "limits": {"max_concurrency": 2}}}}"#,
        )
        .unwrap();
        let ListConfig::Brevo(main) = &c.lists["main"] else {
            panic!("main is a Brevo list");
        };
        assert_eq!(main.limits.max_concurrency, 2);
        assert_eq!(
            main.limits.max_requests_per_window,
            Some(10),
            "Brevo's 10/s stays"
        );
        assert_eq!(main.limits.window_ms, 1_000);
    }

    #[test]
    fn defaults_fill_in_per_provider() {
        let c = parse(BOTH).unwrap();
        c.validate().unwrap();
        let ListConfig::Brevo(main) = &c.lists["main"] else {
            panic!("main is a Brevo list");
        };
        assert_eq!(main.base_url, "https://api.brevo.com/v3");
        assert_eq!(main.limits.max_requests_per_window, Some(10));
        assert_eq!(main.limits.window_ms, 1_000);
        let ListConfig::Mailchimp(product) = &c.lists["product"] else {
            panic!("product is a Mailchimp list");
        };
        assert_eq!(product.limits.max_concurrency, 10);
        assert_eq!(product.limits.max_requests_per_window, None);
        assert_eq!(
            product.effective_base_url().as_deref(),
            Some("https://us6.api.mailchimp.com/3.0")
        );
        assert_eq!(
            c.purposes(),
            BTreeSet::from(["newsletter".to_owned(), "product_news".to_owned()])
        );
    }

    /// The example handed to the binary's example config, as the `[sinks.newsletter]` table
    /// reads without the keys the runtime takes (`enabled`, `batch`, `retry`).
    #[test]
    fn the_toml_example_parses() {
        let mut c: NewsletterConfig = toml::from_str(
            r#"
            [purposes]
            newsletter = ["main"]
            product_updates = ["product"]

            [lists.main]
            provider = "brevo"
            list_id = 7

            [lists.main.limits]
            max_requests_per_window = 10
            window_ms = 1000
            max_concurrency = 4

            [lists.product]
            provider = "mailchimp"
            list_id = "a1b2c3d4e5"

            [lists.product.limits]
            max_concurrency = 10
            "#,
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("lists.main.api_key: missing"), "{err}");
        for (name, key) in [("main", "xkeysib-abc"), ("product", "0123abcd-us21")] {
            match c.lists.get_mut(name).unwrap() {
                ListConfig::Brevo(b) => b.api_key = Some(key.into()),
                ListConfig::Mailchimp(m) => m.api_key = Some(key.into()),
            }
        }
        c.validate().unwrap();
        let ListConfig::Mailchimp(product) = &c.lists["product"] else {
            panic!("product is a Mailchimp list");
        };
        assert_eq!(
            product.effective_base_url().as_deref(),
            Some("https://us21.api.mailchimp.com/3.0")
        );
    }

    #[test]
    fn an_explicit_base_url_wins_over_the_key() {
        let m = MailchimpList {
            base_url: Some("http://127.0.0.1:9/3.0".into()),
            api_key: Some("key-without-dc-".into()),
            list_id: "x".into(),
            limits: DestinationConfig::default(),
        };
        assert_eq!(
            m.effective_base_url().as_deref(),
            Some("http://127.0.0.1:9/3.0")
        );
    }

    #[test]
    fn a_data_center_must_be_alphanumeric() {
        assert_eq!(data_center("abc-us21"), Some("us21"));
        assert_eq!(data_center("abc-us6.evil.example/x"), None);
        assert_eq!(data_center("abc-"), None);
        assert_eq!(data_center("abc"), None);
    }

    #[test]
    fn unknown_keys_and_providers_are_rejected() {
        let err =
            parse(r#"{"lists":{"a":{"provider":"brevo","list_id":1,"listid":2}}}"#).unwrap_err();
        assert!(err.to_string().contains("listid"), "{err}");
        let err = parse(r#"{"lists":{"a":{"provider":"cleverreach","list_id":1}}}"#).unwrap_err();
        assert!(err.to_string().contains("cleverreach"), "{err}");
        let err = parse(r#"{"list":{}}"#).unwrap_err();
        assert!(err.to_string().contains("`list`"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = parse(
            r#"{
            "purposes": {"a": ["x", "x"], "b": ["x", "nope"], "c": []},
            "lists": {
                "x": {"provider": "brevo", "list_id": 0, "base_url": "ftp://b",
                      "limits": {"max_concurrency": 0}},
                "Y-1": {"provider": "mailchimp", "api_key": "nodc", "list_id": "a-b"}
            }
        }"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let expected = [
            "purposes.a: names \"x\" twice",
            "purposes.b: names \"x\", which purpose \"a\" names too",
            "purposes.b: names \"nope\", which is not under lists",
            "purposes.c: must name at least one list",
            "lists.Y-1: list names may hold only",
            "lists.Y-1.list_id: must be a Mailchimp audience id",
            "lists.Y-1.api_key: does not end in -<data center>",
            "lists.x.list_id: must be a positive number",
            "lists.x.base_url: must be an http or https URL",
            "lists.x.api_key: missing; set CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__X__API_KEY",
            "lists.x.limits: max_concurrency: must be at least 1",
        ];
        assert_eq!(shown.len(), expected.len(), "{shown:#?}");
        for (shown, expected) in shown.iter().zip(expected) {
            assert!(shown.starts_with(expected), "{shown} vs {expected}");
        }
    }

    #[test]
    fn no_lists_is_a_problem() {
        let err = parse("{}").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("lists: configure at least one list"), "{err}");
    }

    #[test]
    fn debug_redacts_the_keys() {
        let c = parse(BOTH).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("xkeysib-1"), "{shown}");
        assert!(!shown.contains("0123abcd"), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
    }
}
