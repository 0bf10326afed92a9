use std::collections::{BTreeMap, BTreeSet};

use relay_delivery::{check_https_url, ConfigError, ConfigProblems, DestinationConfig, Secret};

use serde::{Deserialize, Deserializer};

pub use crate::generic::GenericAudience;
use crate::platform::AudiencePlatform;

/// Meta accepts at most 10 000 rows per `/users` call (docs/vendors/meta.md §2).
pub(crate) const META_MAX_ROWS: usize = 10_000;
/// Google accepts at most 10 000 audience members per ingest or remove request
/// (docs/vendors/google.md §3a).
pub(crate) const GOOGLE_MAX_MEMBERS: usize = 10_000;
/// LinkedIn documents no batch limit (docs/vendors/linkedin.md §4); more than this in one request
/// is surely a typo.
pub(crate) const LINKEDIN_MAX_USERS_CEILING: usize = 10_000;
/// X accepts at most 2 500 operations per request (docs/vendors/x.md §5); we send one user per
/// operation.
pub(crate) const X_MAX_USERS: usize = 2_500;

/// The `[sinks.audiences]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudiencesConfig {
    /// Consent purpose → the names of the audiences (keys of `audiences`) that a grant adds the
    /// person to and a withdrawal removes them from. Each audience serves exactly one purpose.
    #[serde(default)]
    pub purposes: BTreeMap<String, Vec<String>>,
    /// Audience name → the platform audience it stands for. A global unsubscribe or an erasure
    /// removes the person from every audience listed here.
    #[serde(default)]
    pub audiences: BTreeMap<String, AudienceConfig>,
}

/// One audience on one ad platform, chosen by `platform = "meta" | "google" | "linkedin" | "x"`,
/// or `"generic"` for a network spoken to over the generic hashed-audience contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase")]
pub enum AudienceConfig {
    Meta(MetaAudience),
    Google(GoogleAudience),
    Linkedin(LinkedInAudience),
    X(XAudience),
    Generic(GenericAudience),
}

/// Which identifiers a Meta audience is matched on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaSchema {
    /// `EMAIL_SHA256`: the hashed email only.
    #[default]
    Email,
    /// Multi-key `["EMAIL", "PHONE"]`: the hashed email and, where the event has one, the hashed
    /// phone (an empty cell otherwise).
    EmailPhone,
}

/// A Meta Custom Audience (customer list).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaAudience {
    /// Graph API root; tests and the demo point this at a fake.
    #[serde(default = "meta_base_url")]
    pub base_url: String,
    /// System-user access token with `ads_management`, sent as the `access_token` form parameter.
    /// Normally left out of the file: the binary fills it from the environment
    /// ([`token_env_var`]).
    #[serde(default)]
    pub token: Option<Secret>,
    /// Graph API version, the first path segment.
    #[serde(default = "meta_api_version")]
    pub api_version: String,
    /// The custom audience id (digits).
    pub audience_id: String,
    /// Which identifiers are sent.
    #[serde(default)]
    pub schema: MetaSchema,
    /// Rows per `/users` call, at most 10 000 (Meta's limit). Lower it if large removals fail.
    #[serde(default = "meta_max_rows")]
    pub max_rows_per_request: usize,
    /// Rate limit, daily budget, concurrency and timeout of this account. Meta signals its
    /// business-use-case limits in response bodies, so by default no window is set.
    #[serde(
        default = "meta_limits",
        deserialize_with = "meta_limits_with_overrides"
    )]
    pub limits: DestinationConfig,
}

/// A Google Ads Customer Match user list, written through the Data Manager API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleAudience {
    /// Data Manager API root; tests and the demo point this at a fake.
    #[serde(default = "google_base_url")]
    pub base_url: String,
    /// OAuth 2.0 access token with the Data Manager scope, sent as `Authorization: Bearer`.
    /// Normally left out of the file: the binary fills it from the environment
    /// ([`token_env_var`]).
    #[serde(default)]
    pub token: Option<Secret>,
    /// The account that owns the user list (digits, no dashes).
    pub operating_account_id: String,
    /// `operatingAccount.accountType` as Google spells it.
    #[serde(default = "google_account_type")]
    pub account_type: String,
    /// The user list id (`productDestinationId`).
    pub product_destination_id: String,
    /// Whether `+tag` is removed from gmail.com and googlemail.com addresses before hashing, as
    /// the newer versions of Google's formatting guide ask (docs/vendors/README.md §0.3).
    #[serde(default = "yes")]
    pub remove_gmail_plus_suffix: bool,
    /// The purposes whose grant means the person consented to `ad_user_data` and
    /// `ad_personalization`. Adds are sent with both consents granted, so every purpose routed to
    /// this audience must be listed here; `validate` checks that.
    #[serde(default)]
    pub consent_purposes: Vec<String>,
    /// Audience members per ingest or remove request, at most 10 000 (Google's limit).
    #[serde(default = "google_max_members")]
    pub max_members_per_request: usize,
    /// Rate limit, daily budget, concurrency and timeout of this project. Defaults to Google's
    /// project quota: 300 requests per minute and 100 000 per day.
    #[serde(
        default = "google_limits",
        deserialize_with = "google_limits_with_overrides"
    )]
    pub limits: DestinationConfig,
}

/// A LinkedIn Matched Audiences DMP segment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedInAudience {
    /// LinkedIn API root; tests and the demo point this at a fake.
    #[serde(default = "linkedin_base_url")]
    pub base_url: String,
    /// OAuth 2.0 access token with `rw_dmp_segments`, sent as `Authorization: Bearer`. Normally
    /// left out of the file: the binary fills it from the environment ([`token_env_var`]).
    #[serde(default)]
    pub token: Option<Secret>,
    /// The DMP segment id (digits).
    pub segment_id: String,
    /// The `LinkedIn-Version` header, `YYYYMM`. LinkedIn sunsets each version after about a year
    /// (HTTP 426), so there is no default to go stale.
    pub linkedin_version: String,
    /// Users per batch request. LinkedIn does not document a limit (docs/vendors/linkedin.md §4,
    /// UNCONFIRMED); 1 000 keeps a request small enough that an undocumented limit is unlikely to
    /// bite and a failed request retries little, while 600 requests a minute still move 600 000
    /// users.
    #[serde(default = "linkedin_max_users")]
    pub max_users_per_request: usize,
    /// Rate limit, daily budget, concurrency and timeout of this member. Defaults to LinkedIn's
    /// 600 requests per minute for the users endpoint.
    #[serde(
        default = "linkedin_limits",
        deserialize_with = "linkedin_limits_with_overrides"
    )]
    pub limits: DestinationConfig,
}

/// An X (Twitter) Ads custom audience.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XAudience {
    /// X Ads API root; tests and the demo point this at a fake.
    #[serde(default = "x_base_url")]
    pub base_url: String,
    /// The four OAuth 1.0a credentials every request is signed with (HMAC-SHA1): the app's
    /// consumer key and secret, and the access token and secret of the user with access to the ads
    /// account. Normally left out of the file: the binary fills each from the environment
    /// ([`credential_env_var`], e.g. `CONSENT_RELAY_AUDIENCES_X_CONSUMER_SECRET`).
    #[serde(default)]
    pub consumer_key: Option<Secret>,
    /// See `consumer_key`.
    #[serde(default)]
    pub consumer_secret: Option<Secret>,
    /// See `consumer_key`.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// See `consumer_key`.
    #[serde(default)]
    pub access_token_secret: Option<Secret>,
    /// The ads account id.
    pub account_id: String,
    /// The custom audience id.
    pub custom_audience_id: String,
    /// Ads API version, the first path segment.
    #[serde(default = "x_api_version")]
    pub api_version: String,
    /// Users per request, at most 2 500 (X's limit on operations; each user is one operation).
    #[serde(default = "x_max_users")]
    pub max_users_per_request: usize,
    /// Rate limit, daily budget, concurrency and timeout of this account. Defaults to X's 1 500
    /// requests per one-minute window for the users endpoint.
    #[serde(default = "x_limits", deserialize_with = "x_limits_with_overrides")]
    pub limits: DestinationConfig,
}

/// The environment variable the binary reads an audience's token from, e.g.
/// `CONSENT_RELAY_AUDIENCES_META_EU_TOKEN` for the audience `meta-eu`.
pub fn token_env_var(audience: &str) -> String {
    credential_env_var(audience, "token")
}

/// The environment variable the binary reads one credential of an audience from (a field named by
/// [`AudienceConfig::credential_fields`]), e.g. `CONSENT_RELAY_AUDIENCES_X_ACCESS_TOKEN_SECRET`
/// for `access_token_secret` of the audience `x`.
pub fn credential_env_var(audience: &str, field: &str) -> String {
    let upper = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "CONSENT_RELAY_AUDIENCES_{}_{}",
        upper(audience),
        upper(field)
    )
}

impl AudienceConfig {
    /// The platform behind this audience: the one place that names every platform.
    pub fn platform(&self) -> &dyn AudiencePlatform {
        match self {
            AudienceConfig::Meta(a) => a,
            AudienceConfig::Google(a) => a,
            AudienceConfig::Linkedin(a) => a,
            AudienceConfig::X(a) => a,
            AudienceConfig::Generic(a) => a,
        }
    }

    fn platform_mut(&mut self) -> &mut dyn AudiencePlatform {
        match self {
            AudienceConfig::Meta(a) => a,
            AudienceConfig::Google(a) => a,
            AudienceConfig::Linkedin(a) => a,
            AudienceConfig::X(a) => a,
            AudienceConfig::Generic(a) => a,
        }
    }

    pub fn base_url(&self) -> &str {
        self.platform().base_url()
    }

    /// The token of a Meta, Google, LinkedIn or generic audience; `None` for X, which signs
    /// requests with four credentials instead ([`XAudience::consumer_key`]).
    pub fn token(&self) -> Option<&str> {
        self.credential("token")
    }

    /// Sets the token of a Meta, Google, LinkedIn or generic audience. X audiences have no token:
    /// for them this sets nothing and returns false (use [`AudienceConfig::set_credential`]).
    pub fn set_token(&mut self, token: String) -> bool {
        self.set_credential("token", token)
    }

    /// The credentials this audience takes, by field name: `token`, or for X `consumer_key`,
    /// `consumer_secret`, `access_token` and `access_token_secret`. The binary reads each from
    /// [`credential_env_var`].
    pub fn credential_fields(&self) -> &'static [&'static str] {
        self.platform().credential_fields()
    }

    /// One credential by field name; `None` if it is not set or the platform has no such field.
    pub fn credential(&self, field: &str) -> Option<&str> {
        self.platform()
            .credential(field)?
            .as_ref()
            .map(Secret::expose)
    }

    /// Sets one credential by field name (one of [`AudienceConfig::credential_fields`]); returns
    /// false, setting nothing, for a field this platform does not take.
    pub fn set_credential(&mut self, field: &str, value: String) -> bool {
        match self.platform_mut().credential_mut(field) {
            Some(slot) => {
                *slot = Some(value.into());
                true
            }
            None => false,
        }
    }

    /// What tells one account on a platform from another, next to the base URL: the token, or X's
    /// access token (which also names the app it was issued to).
    pub fn account_credential(&self) -> Option<&str> {
        self.platform().account_credential()
    }

    pub fn limits(&self) -> &DestinationConfig {
        self.platform().limits()
    }

    /// Most members one request may carry.
    pub fn batch_size(&self) -> usize {
        self.platform().batch_size()
    }
}

impl AudiencesConfig {
    /// This configuration narrowed to one audience: that audience alone, and the purposes that
    /// route to it (naming only it). Each audience is its own destination with its own consumer
    /// group, so that one platform's pause never holds another's.
    pub fn only(&self, audience: &str) -> AudiencesConfig {
        AudiencesConfig {
            purposes: self
                .purposes
                .iter()
                .filter(|(_, names)| names.iter().any(|n| n == audience))
                .map(|(p, _)| (p.clone(), vec![audience.to_owned()]))
                .collect(),
            audiences: self
                .audiences
                .iter()
                .filter(|(name, _)| *name == audience)
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect(),
        }
    }

    /// Checks everything that can be checked without calling the platforms and reports all
    /// problems at once, so that one start attempt shows every mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = ConfigProblems::default();

        // Who uses each audience; an audience must serve exactly one purpose, so that its
        // membership follows one consent decision and converges like the ledger's state does.
        let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (purpose, names) in &self.purposes {
            let key = format!("purposes.{purpose}");
            if names.is_empty() {
                problems.push(&key, "must name at least one audience");
            }
            if names.iter().collect::<BTreeSet<_>>().len() != names.len() {
                problems.push(&key, "names an audience more than once");
            }
            for name in names {
                if self.audiences.contains_key(name) {
                    let purposes = users.entry(name).or_default();
                    if !purposes.contains(&purpose.as_str()) {
                        purposes.push(purpose);
                    }
                } else {
                    problems.push(
                        &key,
                        format!("names audience {name:?}, which is not in `audiences`"),
                    );
                }
            }
        }

        // Audiences on one account share one rate limiter, so they must agree on its limits.
        let mut accounts: BTreeMap<(&str, &str, Option<&str>), &String> = BTreeMap::new();
        for (name, audience) in &self.audiences {
            let key = |field: &str| format!("audiences.{name}.{field}");
            let purposes = users.get(name.as_str()).cloned().unwrap_or_default();
            match purposes.as_slice() {
                [] => problems.push(
                    format!("audiences.{name}"),
                    "is not used by any purpose (remove it, or route a purpose to it)",
                ),
                [_] => {}
                many => problems.push(
                    format!("audiences.{name}"),
                    format!(
                        "is used by purposes {}; an audience must serve exactly one purpose, so \
                         that one withdrawal cannot remove what another purpose's consent allows",
                        many.join(", ")
                    ),
                ),
            }

            // The token and the hashes go to a third party.
            if let Err(message) = check_https_url(audience.base_url()) {
                problems.push(key("base_url"), message);
            }
            // A token, or all four OAuth 1.0a credentials of X.
            for field in audience.credential_fields() {
                match audience.credential(field) {
                    None => problems.push_missing_secret(
                        key(field),
                        format!("missing; set {}", credential_env_var(name, field)),
                    ),
                    // It travels in a header or a form field (X's secrets in a signing key); a
                    // pasted line break would break them all.
                    Some(t) if t.is_empty() || !t.chars().all(|c| c.is_ascii_graphic()) => problems
                        .push(
                            key(field),
                            "must be non-empty printable ASCII without spaces",
                        ),
                    Some(_) => {}
                }
            }
            let account = (
                audience.platform().name(),
                audience.base_url(),
                audience.account_credential(),
            );
            match accounts.get(&account) {
                Some(first) if self.audiences[*first].limits() != audience.limits() => problems
                    .push(
                        key("limits"),
                        format!(
                            "differ from those of audience {first:?} on the same account (same \
                         platform, base_url and token or access_token), which shares one rate \
                         limit"
                        ),
                    ),
                Some(_) => {}
                None => {
                    accounts.insert(account, name);
                }
            }
            let (field, max) = audience.platform().batch_limit();
            if !(1..=max).contains(&audience.batch_size()) {
                problems.push(key(field), format!("must be between 1 and {max}"));
            }
            for problem in audience.limits().problems() {
                // `DestinationConfig::problems` says "key: message"; the key gets the audience's
                // prefix.
                let (field, message) = problem.split_once(": ").unwrap_or(("", &problem));
                problems.push(format!("audiences.{name}.limits.{field}"), message);
            }

            audience.platform().problems(&mut problems, &key, &purposes);
        }

        problems.into_result()
    }
}

pub(crate) fn digits(problems: &mut ConfigProblems, key: String, value: &str) {
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_digit()) {
        problems.push(key, "must be the platform's numeric id (digits only)");
    }
}

/// Ids that go into a URL path verbatim must not be able to change the path.
pub(crate) fn path_segment(problems: &mut ConfigProblems, key: String, value: &str) {
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
        problems.push(key, "must be the platform's id (letters and digits only)");
    }
}

pub(crate) fn is_meta_version(v: &str) -> bool {
    let Some((major, minor)) = v.strip_prefix('v').and_then(|v| v.split_once('.')) else {
        return false;
    };
    [major, minor]
        .iter()
        .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn meta_limits_with_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, meta_limits())
}

fn google_limits_with_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, google_limits())
}

fn linkedin_limits_with_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, linkedin_limits())
}

fn x_limits_with_overrides<'de, D: Deserializer<'de>>(d: D) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, x_limits())
}

/// Uploads of thousands of rows take longer than relay-delivery's generic 10 s.
const UPLOAD_TIMEOUT_MS: u64 = 60_000;
const MINUTE_MS: u64 = 60_000;

fn meta_limits() -> DestinationConfig {
    DestinationConfig {
        request_timeout_ms: UPLOAD_TIMEOUT_MS,
        ..DestinationConfig::default()
    }
}

fn google_limits() -> DestinationConfig {
    DestinationConfig {
        max_requests_per_window: Some(300),
        window_ms: MINUTE_MS,
        daily_budget: Some(100_000),
        request_timeout_ms: UPLOAD_TIMEOUT_MS,
        ..DestinationConfig::default()
    }
}

fn linkedin_limits() -> DestinationConfig {
    DestinationConfig {
        max_requests_per_window: Some(600),
        window_ms: MINUTE_MS,
        request_timeout_ms: UPLOAD_TIMEOUT_MS,
        ..DestinationConfig::default()
    }
}

fn x_limits() -> DestinationConfig {
    DestinationConfig {
        max_requests_per_window: Some(1_500),
        window_ms: MINUTE_MS,
        request_timeout_ms: UPLOAD_TIMEOUT_MS,
        ..DestinationConfig::default()
    }
}

fn meta_base_url() -> String {
    "https://graph.facebook.com".to_owned()
}
fn meta_api_version() -> String {
    "v25.0".to_owned()
}
fn meta_max_rows() -> usize {
    META_MAX_ROWS
}
fn google_base_url() -> String {
    "https://datamanager.googleapis.com".to_owned()
}
fn google_account_type() -> String {
    "GOOGLE_ADS".to_owned()
}
fn google_max_members() -> usize {
    GOOGLE_MAX_MEMBERS
}
fn linkedin_base_url() -> String {
    "https://api.linkedin.com".to_owned()
}
fn linkedin_max_users() -> usize {
    1_000
}
fn x_base_url() -> String {
    "https://ads-api.x.com".to_owned()
}
fn x_api_version() -> String {
    "12".to_owned()
}
fn x_max_users() -> usize {
    X_MAX_USERS
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AudiencesConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn each_platform_says_what_it_is_how_the_ledger_knows_it_and_what_it_receives() {
        use crate::reconcile::LedgerHash;
        let c = parse(FULL).unwrap();
        let row = |name: &str| {
            let p = c.audiences[name].platform();
            (p.name(), p.batch_limit(), p.ledger_hash(), p.recipient().0)
        };
        assert_eq!(
            row("meta-eu"),
            (
                "meta",
                ("max_rows_per_request", 10_000),
                LedgerHash::Email,
                "Meta (Custom Audience 23850000000000001)".to_owned()
            )
        );
        assert_eq!(
            row("google-eu"),
            (
                "google",
                ("max_members_per_request", 10_000),
                LedgerHash::Google { plus_removed: true },
                "Google (Customer Match, Data Manager destination 987654321)".to_owned()
            )
        );
        assert_eq!(
            row("linkedin"),
            (
                "linkedin",
                ("max_users_per_request", 10_000),
                LedgerHash::Email,
                "LinkedIn (Matched Audience segment 123456)".to_owned()
            )
        );
        assert_eq!(
            row("x"),
            (
                "x",
                ("max_users_per_request", 2_500),
                LedgerHash::Email,
                "X (Custom Audience 1nmth)".to_owned()
            )
        );
        let meta = c.audiences["meta-eu"].platform().recipient().1;
        assert!(meta.contains("phone"), "email_phone sends phones: {meta}");
    }

    #[test]
    fn a_generic_audience_is_checked_with_full_keys_and_needs_its_token() {
        let c = parse(
            r#"
            [purposes]
            ads = ["net"]
            [audiences.net]
            platform = "generic"
            base_url = "http://api.example.net"
            add_path = "/add"
            remove_path = "remove"
            max_members_per_request = 50001
            "#,
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        for expected in [
            "audiences.net.base_url: must be https",
            "audiences.net.remove_path: must be a path starting with /",
            "audiences.net.token: missing; set CONSENT_RELAY_AUDIENCES_NET_TOKEN",
            "audiences.net.max_members_per_request: must be between 1 and 50000",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    const FULL: &str = r#"
        [purposes]
        ads_remarketing = ["meta-eu", "google-eu", "linkedin", "x"]

        [audiences.meta-eu]
        platform = "meta"
        token = "m"
        audience_id = "23850000000000001"
        schema = "email_phone"

        [audiences.google-eu]
        platform = "google"
        token = "g"
        operating_account_id = "1234567890"
        product_destination_id = "987654321"
        consent_purposes = ["ads_remarketing"]

        [audiences.google-eu.limits]
        max_concurrency = 2

        [audiences.linkedin]
        platform = "linkedin"
        token = "l"
        segment_id = "123456"
        linkedin_version = "202601"

        [audiences.x]
        platform = "x"
        consumer_key = "ck"
        consumer_secret = "cs"
        access_token = "at"
        access_token_secret = "as"
        account_id = "18ce54d4x5t"
        custom_audience_id = "1nmth"
    "#;

    #[test]
    fn defaults_fill_in_per_platform() {
        let c = parse(FULL).unwrap();
        c.validate().unwrap();
        let AudienceConfig::Meta(meta) = &c.audiences["meta-eu"] else {
            panic!("meta");
        };
        assert_eq!(meta.base_url, "https://graph.facebook.com");
        assert_eq!(meta.api_version, "v25.0");
        assert_eq!(meta.schema, MetaSchema::EmailPhone);
        assert_eq!(meta.max_rows_per_request, 10_000);
        assert_eq!(meta.limits.max_requests_per_window, None);

        let AudienceConfig::Google(google) = &c.audiences["google-eu"] else {
            panic!("google");
        };
        assert_eq!(google.account_type, "GOOGLE_ADS");
        assert!(google.remove_gmail_plus_suffix);
        // A partial limits table overrides only what it names; the rest stays Google's.
        assert_eq!(google.limits.max_concurrency, 2);
        assert_eq!(google.limits.max_requests_per_window, Some(300));
        assert_eq!(google.limits.window_ms, 60_000);
        assert_eq!(google.limits.daily_budget, Some(100_000));

        let AudienceConfig::Linkedin(linkedin) = &c.audiences["linkedin"] else {
            panic!("linkedin");
        };
        assert_eq!(linkedin.base_url, "https://api.linkedin.com");
        assert_eq!(linkedin.max_users_per_request, 1_000);
        assert_eq!(linkedin.limits.max_requests_per_window, Some(600));

        let AudienceConfig::X(x) = &c.audiences["x"] else {
            panic!("x");
        };
        assert_eq!(x.base_url, "https://ads-api.x.com");
        assert_eq!(x.api_version, "12");
        assert_eq!(x.max_users_per_request, 2_500);
        assert_eq!(x.limits.max_requests_per_window, Some(1_500));
        assert_eq!(x.limits.window_ms, 60_000);
    }

    #[test]
    fn unknown_keys_and_platforms_are_rejected() {
        let err = parse(
            r#"[audiences.a]
               platform = "meta"
               audience_id = "1"
               audience = "typo""#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("audience"), "{err}");
        let err = parse(
            r#"[audiences.a]
               platform = "tiktok""#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tiktok"), "{err}");
        let err = parse(
            r#"[audiences.a]
               platform = "x"
               account_id = "a"
               custom_audience_id = "b"
               [audiences.a.limits]
               per_minute = 3"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("per_minute"), "{err}");
        assert!(parse("batch = 3").is_err());
    }

    #[test]
    fn validate_reports_every_problem_by_key() {
        let c = parse(
            r#"
            [purposes]
            ads = ["meta", "google", "ghost"]
            lookalike = ["meta"]
            empty = []

            [audiences.meta]
            platform = "meta"
            base_url = "ftp://graph"
            audience_id = "12a"
            api_version = "25"
            max_rows_per_request = 10001

            [audiences.google]
            platform = "google"
            token = "t"
            operating_account_id = "123-456-7890"
            product_destination_id = "9"
            consent_purposes = ["other"]

            [audiences.linkedin]
            platform = "linkedin"
            token = "t"
            segment_id = "1"
            linkedin_version = "2026-01"

            [audiences.linkedin.limits]
            max_concurrency = 0
            "#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "purposes.ads",
                "purposes.empty",
                "audiences.google.operating_account_id",
                "audiences.google.consent_purposes",
                "audiences.google.consent_purposes",
                "audiences.linkedin",
                "audiences.linkedin.limits.max_concurrency",
                "audiences.linkedin.linkedin_version",
                "audiences.meta",
                "audiences.meta.base_url",
                "audiences.meta.token",
                "audiences.meta.max_rows_per_request",
                "audiences.meta.audience_id",
                "audiences.meta.api_version",
            ],
            "{problems:#?}"
        );
        let text = ConfigError::Invalid(problems).to_string();
        assert!(
            text.contains("CONSENT_RELAY_AUDIENCES_META_TOKEN"),
            "{text}"
        );
        assert!(text.contains("used by purposes ads, lookalike"), "{text}");
    }

    #[test]
    fn audiences_on_one_account_must_agree_on_its_limits() {
        let c = parse(
            r#"
            [purposes]
            ads = ["a"]
            lookalike = ["b"]

            [audiences.a]
            platform = "meta"
            token = "same"
            audience_id = "1"

            [audiences.b]
            platform = "meta"
            token = "same"
            audience_id = "2"

            [audiences.b.limits]
            max_requests_per_window = 10
            "#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "audiences.b.limits");
        assert!(problems[0].message.contains("\"a\""), "{}", problems[0]);
    }

    #[test]
    fn token_env_var_and_set_token() {
        assert_eq!(
            token_env_var("meta-eu"),
            "CONSENT_RELAY_AUDIENCES_META_EU_TOKEN"
        );
        let mut c = parse(FULL).unwrap();
        let meta = c.audiences.get_mut("meta-eu").unwrap();
        assert!(meta.set_token("from-env".into()));
        assert_eq!(meta.token(), Some("from-env"));
        assert_eq!(meta.credential_fields(), ["token"]);
    }

    #[test]
    fn x_takes_four_oauth1_credentials_from_their_own_variables() {
        let mut c = parse(FULL).unwrap();
        let x = c.audiences.get_mut("x").unwrap();
        let vars: Vec<String> = x
            .credential_fields()
            .iter()
            .map(|field| credential_env_var("x-us", field))
            .collect();
        assert_eq!(
            vars,
            [
                "CONSENT_RELAY_AUDIENCES_X_US_CONSUMER_KEY",
                "CONSENT_RELAY_AUDIENCES_X_US_CONSUMER_SECRET",
                "CONSENT_RELAY_AUDIENCES_X_US_ACCESS_TOKEN",
                "CONSENT_RELAY_AUDIENCES_X_US_ACCESS_TOKEN_SECRET",
            ]
        );
        // No single token.
        assert!(!x.set_token("t".into()));
        assert_eq!(x.token(), None);
        assert!(!x.set_credential("token", "t".into()));
        assert!(x.set_credential("access_token_secret", "new".into()));
        assert_eq!(x.credential("access_token_secret"), Some("new"));
        assert_eq!(x.account_credential(), Some("at"));
        let AudienceConfig::X(a) = x else {
            panic!("x");
        };
        assert_eq!(
            a.access_token_secret.as_ref().map(Secret::expose),
            Some("new")
        );

        // A bearer token in the file is a mistake now, not a silently unused value.
        let err = parse(
            r#"[audiences.x]
               platform = "x"
               token = "t"
               account_id = "a"
               custom_audience_id = "b""#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn x_requires_all_four_credentials() {
        let c = parse(
            r#"
            [purposes]
            ads = ["x"]

            [audiences.x]
            platform = "x"
            consumer_key = "ck"
            access_token = "has space"
            account_id = "18ce54d4x5t"
            custom_audience_id = "1nmth"
            "#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "audiences.x.consumer_secret: missing; set \
                 CONSENT_RELAY_AUDIENCES_X_CONSUMER_SECRET",
                "audiences.x.access_token: must be non-empty printable ASCII without spaces",
                "audiences.x.access_token_secret: missing; set \
                 CONSENT_RELAY_AUDIENCES_X_ACCESS_TOKEN_SECRET",
            ]
        );
    }

    #[test]
    fn debug_redacts_every_credential() {
        let mut c = parse(FULL).unwrap();
        for audience in c.audiences.values_mut() {
            for field in audience.credential_fields() {
                assert!(audience.set_credential(field, "secret-value".into()));
            }
        }
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-value"), "{shown}");
        // Three tokens and X's four credentials.
        assert_eq!(shown.matches("<redacted>").count(), 7, "{shown}");
    }
}
