//! What a platform module provides. Each platform's configuration implements [`AudiencePlatform`]
//! in the platform's own module (`meta.rs`, `google.rs`, ...), and the sink reaches every platform
//! through it: a new platform is its module plus one variant of `AudienceConfig`.

use relay_delivery::{ConfigProblems, DestinationConfig, Reply, Secret};
use reqwest::Method;

use crate::meta::Session;
use crate::reconcile::LedgerHash;
use crate::request::{Answer, HttpCall, Member, Op};

/// How `ledger audit` describes what an audience receives, when it is the email hash alone.
pub const HASHED_EMAIL: &str = "SHA-256 of the normalized email address (no address in clear)";

/// One ad platform, as its audience's configuration knows it.
pub trait AudiencePlatform {
    /// `platform` as the config file spells it; also in logs and outcome reasons.
    fn name(&self) -> &'static str;

    fn base_url(&self) -> &str;

    /// The account's rate limit, daily budget, concurrency and timeout.
    fn limits(&self) -> &DestinationConfig;

    /// Most members one request may carry.
    fn batch_size(&self) -> usize;

    /// The key that sets [`AudiencePlatform::batch_size`], and the platform's ceiling for it.
    fn batch_limit(&self) -> (&'static str, usize);

    /// The credentials this platform takes, by field name; the binary reads each from
    /// `credential_env_var`.
    fn credential_fields(&self) -> &'static [&'static str] {
        &["token"]
    }

    /// One credential by field name; `None` for a field this platform does not take.
    fn credential(&self, field: &str) -> Option<&Option<Secret>>;

    /// The same, to set it.
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>>;

    /// What tells one account on the platform from another, next to the base URL.
    fn account_credential(&self) -> Option<&str> {
        self.credential("token")?.as_ref().map(Secret::expose)
    }

    /// The person's email and phone normalized the platform's way (hashed by the caller); `None`
    /// when the email cannot be. The phone only where the audience sends phones and it
    /// normalizes.
    fn identify(&self, email: &str, phone: Option<&str>) -> Option<(String, Option<String>)>;

    /// The request for one batch; `session` ties the batches of a large upload together where
    /// the platform has such a thing (Meta).
    fn call(&self, op: Op, batch: &[Member], session: Option<Session>) -> HttpCall;

    /// The platform's answer to a request of `sent` members, as outcomes.
    fn answer(&self, reply: &Reply, sent: usize) -> Answer;

    /// The `Authorization` header of a JSON request: the bearer token by default; X signs each
    /// request with OAuth 1.0a instead. `None`: no header.
    fn authorization(&self, _method: &Method, _url: &str, token: &str) -> Option<String> {
        Some(format!("Bearer {token}"))
    }

    /// Checks the fields only this platform has; `key` makes a field's full key, `purposes` are
    /// those routed to the audience.
    fn problems(
        &self,
        problems: &mut ConfigProblems,
        key: &dyn Fn(&str) -> String,
        purposes: &[&str],
    );

    /// Which of the ledger's hashes of an address the platform matches. No default: a platform
    /// with a rule of its own must not fall through to hashes it does not know (its removals
    /// would count as applied and remove nobody).
    fn ledger_hash(&self) -> LedgerHash;

    /// Who receives the data, and what, for `ledger audit`.
    fn recipient(&self) -> (String, String);
}
