//! What `consent-relay reconcile` needs of the audiences sink. No platform lets us read an
//! audience's members back, so reconciling an audience means re-sending removals for everyone the
//! ledger says must not be in it, from the email hashes the ledger keeps
//! (`relay_events::normalize::email_sha256`: SHA-256 of the trimmed, lowercased address).
//!
//! That hash is only the platform's own where the platform normalizes the same way:
//! - Meta: trim and lowercase (its SDK also strips dots at either end, which no valid address
//!   has): the same hash for every address the relay accepts (docs/vendors/meta.md).
//! - LinkedIn and X: trim and lowercase: the same (docs/vendors/linkedin.md, x.md).
//! - Google: removes dots (and perhaps a `+tag`) in gmail.com / googlemail.com addresses and all
//!   inner whitespace: a different hash for those, and the ledger cannot tell which addresses
//!   they are. Google audiences are refused rather than sent wrong hashes.

use relay_delivery::Outcome;

use crate::client::AudiencesSink;
use crate::config::AudienceConfig;
use crate::meta::Session;
use crate::request::{merge, Member, Op};

/// Where one batch stands in a multi-request removal (Meta ties them together with a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPosition {
    pub session_id: u64,
    /// 1-based.
    pub seq: usize,
    pub last: bool,
    /// Rows in the whole run.
    pub total: usize,
}

impl AudiencesSink {
    /// The audiences of this sink, with `Err(reason)` for those whose platform hash is not the
    /// ledger's (see the module docs).
    pub fn reconcilable(&self) -> Vec<(String, Result<(), String>)> {
        self.config
            .audiences
            .iter()
            .map(|(name, a)| {
                let ok = match a {
                    AudienceConfig::Meta(_)
                    | AudienceConfig::Linkedin(_)
                    | AudienceConfig::X(_) => Ok(()),
                    AudienceConfig::Google(_) => Err(
                        "Google normalizes gmail.com addresses (dots, +tags) before hashing; the \
                         ledger's hash (trim + lowercase) differs for those, and the ledger holds \
                         no address to re-hash: not sending hashes Google would not match"
                            .to_owned(),
                    ),
                };
                (name.clone(), ok)
            })
            .collect()
    }

    /// The purposes routed to `audience`.
    pub fn purposes_of(&self, audience: &str) -> Vec<String> {
        self.config
            .purposes
            .iter()
            .filter(|(_, audiences)| audiences.iter().any(|a| a == audience))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Rows per removal request for `audience` (Meta 10 000 by default).
    pub fn batch_size(&self, audience: &str) -> Option<usize> {
        self.config.audiences.get(audience).map(|a| a.batch_size())
    }

    /// Removes `hashes` (lowercase hex SHA-256 of the ledger-normalized email, at most
    /// [`Self::batch_size`]) from `audience` in one request, through the account's destination.
    /// Returns the batch's worst outcome. Removal is idempotent at every platform: removing someone
    /// not in the audience changes nothing.
    pub async fn remove_hashes(
        &self,
        audience: &str,
        hashes: &[String],
        position: Option<BatchPosition>,
    ) -> Outcome {
        let (Some(config), Some(&account)) = (
            self.config.audiences.get(audience),
            self.account_of.get(audience),
        ) else {
            return Outcome::permanent(format!("no audience {audience} in this sink"));
        };
        if let AudienceConfig::Google(_) = config {
            return Outcome::permanent("Google audiences cannot be reconciled from ledger hashes");
        }
        let members: Vec<Member> = hashes
            .iter()
            .map(|h| Member {
                items: Vec::new(),
                email: h.clone(),
                phone: None,
            })
            .collect();
        let session = position.map(|p| Session {
            id: p.session_id,
            seq: p.seq,
            last: p.last,
            total: p.total,
        });
        let answer = self
            .send(audience, config, account, Op::Remove, &members, session)
            .await;
        let mut worst = None;
        for outcome in answer.outcomes {
            merge(&mut worst, outcome);
        }
        worst.unwrap_or(Outcome::Applied)
    }
}
