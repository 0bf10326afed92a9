use std::collections::{BTreeMap, BTreeSet};

use relay_delivery::{ConfigError, ConfigProblems, DestinationConfig, Secret};
use serde::{Deserialize, Deserializer, Serialize};

/// HubSpot's own batch limit is undocumented (docs/vendors/hubspot.md §1c); its legacy v1 batch
/// endpoint caps at 1000, so a larger value is surely a typo.
const MAX_INPUTS_CEILING: usize = 1000;

/// The `[sinks.hubspot]` section of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    /// Where the HubSpot API lives; tests and the demo point this at a fake.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Private-app or OAuth access token, sent as `Authorization: Bearer <token>`. Normally left out
    /// of the file: the binary fills it from `CONSENT_RELAY_HUBSPOT_TOKEN`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Most inputs sent in one batch call. HubSpot does not document its limit; public clients
    /// use 100.
    #[serde(default = "default_max_inputs_per_request")]
    pub max_inputs_per_request: usize,
    /// Request limits of the HubSpot account (`[sinks.hubspot.limits]`), shared by every request
    /// this sink sends, retries included. Defaults: 100 requests per 10 s rolling window (the burst
    /// limit of Free and Starter accounts and of OAuth apps; Professional and Enterprise accounts
    /// allow 190, the API limit increase pack 250), no daily budget (HubSpot's own daily limit is
    /// honoured from its headers), 4 requests in flight, 10 s request timeout. Keys left out of
    /// the table keep these defaults; there is no way to switch the burst limit off, as every
    /// HubSpot account has one.
    #[serde(
        default = "default_limits",
        deserialize_with = "limits_over_hubspot_defaults"
    )]
    pub limits: DestinationConfig,
    /// The contact properties a grant with `create_contact` may send to HubSpot; nothing else ever
    /// leaves the relay. Values come from the event's contact fields, and empty ones are left out.
    /// The email is always sent as the upsert's `id`, listed here or not.
    #[serde(default = "default_contact_properties")]
    pub contact_properties: Vec<ContactProperty>,
    /// Consent purpose name → the HubSpot subscription types it stands for.
    #[serde(default)]
    pub purposes: BTreeMap<String, PurposeConfig>,
}

/// How one consent purpose maps onto HubSpot email subscription types.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeConfig {
    /// The subscription type ids (Settings → Marketing → Email → Subscription types) that a grant
    /// subscribes to and a withdrawal unsubscribes from. At least one.
    pub subscription_ids: Vec<i64>,
    /// The GDPR legal basis HubSpot records with each status change.
    #[serde(default)]
    pub legal_basis: LegalBasis,
    /// Human-readable proof text recorded with each status change; the event's notice version is
    /// appended to it.
    pub legal_basis_explanation: String,
    /// Whether a grant first creates or updates the CRM contact (batch upsert by email, with the
    /// allow-listed `contact_properties`) before it writes the subscription status.
    #[serde(default)]
    pub create_contact: bool,
}

/// HubSpot's `legalBasis` values (docs/vendors/hubspot.md §1b), spelled as HubSpot spells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LegalBasis {
    #[default]
    ConsentWithNotice,
    LegitimateInterestClient,
    LegitimateInterestOther,
    LegitimateInterestPql,
    NonGdpr,
    PerformanceOfContract,
    ProcessAndStore,
}

/// A HubSpot contact property the relay can fill from an event, by its HubSpot internal name.
/// A closed set: a name the relay has no value for would be a silent no-op, so it fails at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactProperty {
    /// The normalized email address.
    Email,
    /// The contact's first name.
    Firstname,
    /// The contact's last name.
    Lastname,
    /// The contact's company name.
    Company,
    /// The phone number, as the event carries it.
    Phone,
}

impl ContactProperty {
    /// HubSpot's internal property name.
    pub fn name(self) -> &'static str {
        match self {
            ContactProperty::Email => "email",
            ContactProperty::Firstname => "firstname",
            ContactProperty::Lastname => "lastname",
            ContactProperty::Company => "company",
            ContactProperty::Phone => "phone",
        }
    }
}

fn default_base_url() -> String {
    "https://api.hubapi.com".to_owned()
}

fn default_max_inputs_per_request() -> usize {
    100
}

fn default_limits() -> DestinationConfig {
    DestinationConfig {
        max_requests_per_window: Some(100),
        window_ms: 10_000,
        daily_budget: None,
        max_concurrency: 4,
        ..DestinationConfig::default()
    }
}

fn default_contact_properties() -> Vec<ContactProperty> {
    vec![
        ContactProperty::Email,
        ContactProperty::Firstname,
        ContactProperty::Lastname,
        ContactProperty::Company,
        ContactProperty::Phone,
    ]
}

/// Reads `[limits]` as changes to HubSpot's defaults.
fn limits_over_hubspot_defaults<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(deserializer, default_limits())
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        HubSpotConfig {
            base_url: default_base_url(),
            token: None,
            max_inputs_per_request: default_max_inputs_per_request(),
            limits: default_limits(),
            contact_properties: default_contact_properties(),
            purposes: BTreeMap::new(),
        }
    }
}

impl HubSpotConfig {
    /// Checks everything that can be checked without calling HubSpot and reports all problems at
    /// once, so that one start attempt shows every mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = ConfigProblems::default();

        match reqwest::Url::parse(&self.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => problems.push("base_url", "must be an http or https URL"),
            Err(_) => problems.push("base_url", "is not a URL"),
        }
        match &self.token {
            Some(token) if !token.is_blank() => {
                if let Some(why) = token.malformed() {
                    problems.push("token", why);
                }
            }
            _ => problems.push_missing_secret(
                "token",
                "missing; set CONSENT_RELAY_HUBSPOT_TOKEN to a private-app access token",
            ),
        }
        if self.max_inputs_per_request == 0 || self.max_inputs_per_request > MAX_INPUTS_CEILING {
            problems.push(
                "max_inputs_per_request",
                format!("must be between 1 and {MAX_INPUTS_CEILING}"),
            );
        }
        for text in self.limits.problems() {
            // DestinationConfig names each problem `<key>: <message>`.
            let (key, message) = text.split_once(": ").unwrap_or(("", &text));
            problems.push(format!("limits.{key}"), message);
        }
        for (name, purpose) in &self.purposes {
            let key = |field: &str| format!("purposes.{name}.{field}");
            if purpose.subscription_ids.is_empty() {
                problems.push(
                    key("subscription_ids"),
                    "must name at least one subscription type",
                );
            }
            if purpose.subscription_ids.iter().any(|id| *id <= 0) {
                problems.push(key("subscription_ids"), "ids must be positive");
            }
            let distinct: BTreeSet<_> = purpose.subscription_ids.iter().collect();
            if distinct.len() != purpose.subscription_ids.len() {
                problems.push(key("subscription_ids"), "contains duplicates");
            }
            // HubSpot requires the explanation alongside the legal basis in GDPR-enabled portals.
            if purpose.legal_basis_explanation.trim().is_empty() {
                problems.push(key("legal_basis_explanation"), "must not be empty");
            }
        }

        problems.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<HubSpotConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults_fill_in() {
        let c = parse(r#"{"token":"t"}"#).unwrap();
        assert_eq!(c.base_url, "https://api.hubapi.com");
        assert_eq!(c.max_inputs_per_request, 100);
        assert_eq!(c.limits.max_requests_per_window, Some(100));
        assert_eq!(c.limits.window_ms, 10_000);
        assert_eq!(c.limits.daily_budget, None);
        assert_eq!(c.limits.max_concurrency, 4);
        assert_eq!(c.limits.request_timeout_ms, 10_000);
        let names: Vec<_> = c.contact_properties.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            ["email", "firstname", "lastname", "company", "phone"]
        );
        assert!(c.purposes.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn a_limits_table_changes_only_the_keys_it_names() {
        let c =
            parse(r#"{"token":"t","limits":{"request_timeout_ms":2500,"daily_budget":250000}}"#)
                .unwrap();
        assert_eq!(
            c.limits,
            DestinationConfig {
                max_requests_per_window: Some(100),
                window_ms: 10_000,
                daily_budget: Some(250_000),
                max_concurrency: 4,
                request_timeout_ms: 2_500,
            }
        );
        let c = parse(r#"{"token":"t","limits":{"max_requests_per_window":190}}"#).unwrap();
        assert_eq!(c.limits.max_requests_per_window, Some(190));
        assert_eq!(c.limits.window_ms, 10_000);
    }

    #[test]
    fn purpose_with_defaults() {
        let c = parse(
            r#"{"token":"t","purposes":{"newsletter":{
                "subscription_ids":[12345],"legal_basis_explanation":"Signed up via web form"}}}"#,
        )
        .unwrap();
        let p = &c.purposes["newsletter"];
        assert_eq!(p.legal_basis, LegalBasis::ConsentWithNotice);
        assert_eq!(p.subscription_ids, vec![12345]);
        assert!(!p.create_contact);
        c.validate().unwrap();
    }

    #[test]
    fn legal_basis_uses_hubspot_spelling() {
        let b: LegalBasis = serde_json::from_str(r#""LEGITIMATE_INTEREST_PQL""#).unwrap();
        assert_eq!(b, LegalBasis::LegitimateInterestPql);
        assert_eq!(
            serde_json::to_string(&LegalBasis::PerformanceOfContract).unwrap(),
            r#""PERFORMANCE_OF_CONTRACT""#
        );
        assert!(serde_json::from_str::<LegalBasis>(r#""consent""#).is_err());
    }

    #[test]
    fn unknown_keys_and_properties_are_rejected() {
        let err = parse(r#"{"token":"t","batch_size":10}"#).unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
        // Moved to [limits].
        let err = parse(r#"{"token":"t","request_timeout_ms":10}"#).unwrap_err();
        assert!(err.to_string().contains("request_timeout_ms"), "{err}");
        let err = parse(r#"{"token":"t","limits":{"burst":10}}"#).unwrap_err();
        assert!(err.to_string().contains("burst"), "{err}");
        let err = parse(
            r#"{"purposes":{"p":{"subscription_ids":[1],"legal_basis_explanation":"x","id":2}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        let err = parse(r#"{"contact_properties":["email","firstName"]}"#).unwrap_err();
        assert!(err.to_string().contains("firstName"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = parse(
            r#"{"base_url":"ftp://x","max_inputs_per_request":0,
                "limits":{"max_requests_per_window":0,"request_timeout_ms":0},
                "purposes":{"news":{"subscription_ids":[],"legal_basis_explanation":" "},
                            "ads":{"subscription_ids":[7,7,-1],"legal_basis_explanation":"ok"}}}"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "base_url",
                "token",
                "max_inputs_per_request",
                "limits.max_requests_per_window",
                "limits.request_timeout_ms",
                "purposes.ads.subscription_ids",
                "purposes.ads.subscription_ids",
                "purposes.news.subscription_ids",
                "purposes.news.legal_basis_explanation",
            ]
        );
        assert_eq!(problems[4].message, "must be at least 1");
    }

    #[test]
    fn batch_limit_above_ceiling_is_rejected() {
        let c = HubSpotConfig {
            token: Some("t".into()),
            max_inputs_per_request: 1001,
            ..HubSpotConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_inputs_per_request: must be between 1 and 1000"),
            "{err}"
        );
    }

    #[test]
    fn a_token_read_from_a_file_works_a_broken_one_is_a_problem() {
        let c = HubSpotConfig {
            token: Some("pat-eu1-abc\n".into()),
            ..HubSpotConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(c.token.as_ref().unwrap().expose(), "pat-eu1-abc");
        let broken = HubSpotConfig {
            token: Some("pat-eu1 abc".into()),
            ..HubSpotConfig::default()
        };
        let err = broken.validate().unwrap_err().to_string();
        assert!(err.contains("token: must be printable ASCII"), "{err}");
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = HubSpotConfig {
            token: Some("pat-eu1-secret".into()),
            ..HubSpotConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
