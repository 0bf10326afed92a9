use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use relay_delivery::{check_https_url, ConfigError, ConfigProblems, DestinationConfig, Secret};
use relay_events::Contact;
use serde::Deserialize;

/// Standard Webhooks: a symmetric secret is `whsec_` + base64 of 24 to 64 random bytes.
const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The `[sinks.partner]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSinkConfig {
    /// The partners by name (lowercase letters, digits and `_`, so that
    /// `CONSENT_RELAY__SINKS__PARTNER__PARTNERS__<NAME>__SIGNING_SECRET` can set a secret).
    #[serde(default)]
    pub partners: BTreeMap<String, PartnerConfig>,
}

/// One partner that receives leads by signed webhook (Standard Webhooks v1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// The partner's webhook URL. Must be https: the payloads carry personal data. Plain http is
    /// accepted for loopback addresses only (tests, the demo).
    pub endpoint: String,
    /// The endpoint's secret, `whsec_` + base64 of 24 to 64 bytes, as the partner issued it. Signs
    /// every delivery (HMAC-SHA256). Normally left out of the file and set through the
    /// environment.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// The consent purpose that gates this partner: a grant of it sends the lead, its withdrawal
    /// (or a global unsubscribe) sends `consent.withdrawn`, and an erasure `subject.erased`.
    pub purpose: String,
    /// The contact fields a lead may carry: the allow-list, nothing else ever leaves. Spelled as
    /// in the event schema: email, first_name, last_name, company, phone, street, postal_code,
    /// city, country, company_size.
    pub fields: Vec<LeadField>,
    /// Rate limit, concurrency and timeout of requests to the endpoint; each key set overrides
    /// only itself. The default timeout is 15 s, the low end of what Standard Webhooks recommends.
    #[serde(default = "default_limits", deserialize_with = "limits_with_overrides")]
    pub limits: DestinationConfig,
}

/// A contact field that a partner may receive, named as in the event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadField {
    Email,
    FirstName,
    LastName,
    Company,
    Phone,
    Street,
    PostalCode,
    City,
    Country,
    CompanySize,
}

impl LeadField {
    /// The key in the payload, the same as in the event schema.
    pub fn key(self) -> &'static str {
        match self {
            LeadField::Email => "email",
            LeadField::FirstName => "first_name",
            LeadField::LastName => "last_name",
            LeadField::Company => "company",
            LeadField::Phone => "phone",
            LeadField::Street => "street",
            LeadField::PostalCode => "postal_code",
            LeadField::City => "city",
            LeadField::Country => "country",
            LeadField::CompanySize => "company_size",
        }
    }

    /// The field's value in `contact`, if set.
    pub fn value(self, contact: &Contact) -> Option<&str> {
        match self {
            LeadField::Email => contact.email.as_deref(),
            LeadField::FirstName => contact.first_name.as_deref(),
            LeadField::LastName => contact.last_name.as_deref(),
            LeadField::Company => contact.company.as_deref(),
            LeadField::Phone => contact.phone.as_deref(),
            LeadField::Street => contact.street.as_deref(),
            LeadField::PostalCode => contact.postal_code.as_deref(),
            LeadField::City => contact.city.as_deref(),
            LeadField::Country => contact.country.as_deref(),
            LeadField::CompanySize => contact.company_size.as_deref(),
        }
    }
}

fn default_limits() -> DestinationConfig {
    DestinationConfig {
        request_timeout_ms: 15_000,
        ..DestinationConfig::default()
    }
}

fn limits_with_overrides<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, default_limits())
}

impl PartnerSinkConfig {
    /// The purposes that route to this sink: the partners' gating purposes.
    pub fn purposes(&self) -> BTreeSet<String> {
        self.partners.values().map(|p| p.purpose.clone()).collect()
    }

    /// Checks everything that can be checked without calling a partner and reports all problems
    /// at once, so that one start attempt shows every mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = ConfigProblems::default();
        if self.partners.is_empty() {
            problems.push("partners", "configure at least one partner");
        }
        // The webhook-id is our event id: two partner entries on one endpoint would send two
        // different messages under one id, and the receiver would drop the second as a repeat.
        let mut endpoints: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, partner) in &self.partners {
            let shared_endpoint = endpoints.insert(partner.endpoint.trim(), name);
            let key_of = |field: &str| {
                if field.is_empty() {
                    format!("partners.{name}")
                } else {
                    format!("partners.{name}.{field}")
                }
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                problems.push(
                    key_of(""),
                    "partner names may hold only a-z, 0-9 and _ (so that an environment variable \
                     can name them)",
                );
            }
            if let Err(message) = check_https_url(&partner.endpoint) {
                problems.push(key_of("endpoint"), message);
            }
            if let Some(other) = shared_endpoint {
                problems.push(
                    key_of("endpoint"),
                    format!(
                        "is the endpoint of partner {other:?} too; one endpoint can serve one \
                         partner entry only (webhook ids are event ids)"
                    ),
                );
            }
            match &partner.signing_secret {
                None => problems.push_missing_secret(
                    key_of("signing_secret"),
                    format!(
                        "missing; set CONSENT_RELAY__SINKS__PARTNER__PARTNERS__{}__SIGNING_SECRET",
                        name.to_uppercase()
                    ),
                ),
                Some(secret) => {
                    if let Err(message) = secret_key(secret.expose()) {
                        problems.push(key_of("signing_secret"), message);
                    }
                }
            }
            if partner.purpose.trim().is_empty() {
                problems.push(key_of("purpose"), "must name a purpose");
            }
            if partner.fields.is_empty() {
                problems.push(
                    key_of("fields"),
                    "must allow at least one field; a lead without contact data is of no use",
                );
            }
            let distinct: BTreeSet<_> = partner.fields.iter().collect();
            if distinct.len() != partner.fields.len() {
                problems.push(key_of("fields"), "contains duplicates");
            }
            for p in partner.limits.problems() {
                problems.push(key_of("limits"), p);
            }
        }
        problems.into_result()
    }
}

/// The HMAC key a `whsec_…` secret stands for.
pub(crate) fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with {SECRET_PREFIX}"))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("is not base64 after {SECRET_PREFIX}"))?;
    if !SECRET_BYTES.contains(&key.len()) {
        return Err(format!(
            "must encode {} to {} bytes, not {}",
            SECRET_BYTES.start(),
            SECRET_BYTES.end(),
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `whsec_` + base64 of the 24 bytes 0..24.
    const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";

    fn parse(json: &str) -> Result<PartnerSinkConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn in_gmbh(extra: &str) -> String {
        format!(
            r#"{{"partners":{{"in_gmbh":{{"endpoint":"https://leads.example/hook",
                "signing_secret":"{SECRET}","purpose":"partner_in_gmbh",
                "fields":["email","first_name","last_name","company","phone","street",
                          "postal_code","city","country","company_size"]{extra}}}}}}}"#
        )
    }

    #[test]
    fn the_documented_shape_parses_with_defaults() {
        let c = parse(&in_gmbh("")).unwrap();
        c.validate().unwrap();
        let p = &c.partners["in_gmbh"];
        assert_eq!(p.fields.len(), 10);
        assert_eq!(p.fields[9], LeadField::CompanySize);
        assert_eq!(p.limits.request_timeout_ms, 15_000);
        assert_eq!(c.purposes(), BTreeSet::from(["partner_in_gmbh".to_owned()]));
        assert_eq!(secret_key(SECRET).unwrap(), (0u8..24).collect::<Vec<_>>());
    }

    /// The example handed to the binary's example config, as the `[sinks.partner]` table reads
    /// without the keys the runtime takes (`enabled`, `batch`, `retry`).
    #[test]
    fn the_toml_example_parses() {
        let mut c: PartnerSinkConfig = toml::from_str(
            r#"
            [partners.in_gmbh]
            endpoint = "https://leads.in-gmbh.example/webhooks/consent-relay"
            purpose = "partner_in_gmbh"
            fields = ["first_name", "last_name", "company", "email", "street", "postal_code",
                      "city", "country", "phone", "company_size"]

            [partners.in_gmbh.limits]
            max_concurrency = 2
            request_timeout_ms = 15000
            "#,
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("partners.in_gmbh.signing_secret: missing"),
            "{err}"
        );
        c.partners.get_mut("in_gmbh").unwrap().signing_secret = Some(SECRET.into());
        c.validate().unwrap();
        assert_eq!(c.partners["in_gmbh"].fields.len(), 10);
    }

    #[test]
    fn unknown_keys_and_fields_are_rejected() {
        let err = parse(&in_gmbh(r#","secret":"x""#)).unwrap_err();
        assert!(err.to_string().contains("`secret`"), "{err}");
        let err = parse(
            r#"{"partners":{"p":{"endpoint":"https://x","purpose":"p","fields":["birthday"]}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("birthday"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = parse(
            r#"{"partners":{
                "In-GmbH":{"endpoint":"http://leads.example/hook","purpose":" ","fields":[]},
                "b":{"endpoint":"ftp://x","signing_secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
                     "purpose":"p","fields":["email","email"],"limits":{"window_ms":0}},
                "c":{"endpoint":"not a url","signing_secret":"whsec_AAEC","purpose":"p",
                     "fields":["email"]},
                "d":{"endpoint":"http://127.0.0.1:8080/x","signing_secret":"whsec_###",
                     "purpose":"p","fields":["email"]}
            }}"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "partners.In-GmbH: partner names may hold only a-z, 0-9 and _ (so that an \
                 environment variable can name them)",
                "partners.In-GmbH.endpoint: must be https (plain http only for loopback addresses)",
                "partners.In-GmbH.signing_secret: missing; set \
                 CONSENT_RELAY__SINKS__PARTNER__PARTNERS__IN-GMBH__SIGNING_SECRET",
                "partners.In-GmbH.purpose: must name a purpose",
                "partners.In-GmbH.fields: must allow at least one field; a lead without contact \
                 data is of no use",
                "partners.b.endpoint: must be an https URL",
                "partners.b.signing_secret: must start with whsec_",
                "partners.b.fields: contains duplicates",
                "partners.b.limits: window_ms: must be at least 1",
                "partners.c.endpoint: is not a URL",
                "partners.c.signing_secret: must encode 24 to 64 bytes, not 3",
                "partners.d.signing_secret: is not base64 after whsec_",
            ]
        );
    }

    #[test]
    fn two_partners_cannot_share_an_endpoint() {
        let c = parse(&format!(
            r#"{{"partners":{{
                "a":{{"endpoint":"https://x/hook","signing_secret":"{SECRET}","purpose":"p",
                      "fields":["email"]}},
                "b":{{"endpoint":"https://x/hook","signing_secret":"{SECRET}","purpose":"q",
                      "fields":["email"]}}}}}}"#
        ))
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("partners.b.endpoint: is the endpoint of partner \"a\" too"),
            "{err}"
        );
    }

    #[test]
    fn no_partner_is_a_problem() {
        let err = parse("{}").unwrap().validate().unwrap_err().to_string();
        assert!(
            err.contains("partners: configure at least one partner"),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = parse(&in_gmbh("")).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("AAECAw"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
