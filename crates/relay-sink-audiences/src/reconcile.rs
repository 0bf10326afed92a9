//! What `consent-relay reconcile` needs of the audiences sink. No platform lets us read an
//! audience's members back, so reconciling an audience means re-sending removals for everyone the
//! ledger says must not be in it, from the email hashes the ledger keeps. Which of them is the
//! platform's own ([`LedgerHash`]):
//! - Meta: trim and lowercase (its SDK also strips dots at either end, which no valid address
//!   has): the ledger's `email_sha256` for every address the relay accepts (docs/vendors/meta.md).
//! - LinkedIn, X and the generic contract: trim and lowercase: the same (docs/vendors/linkedin.md,
//!   x.md, generic-audience.md).
//! - Google: removes the dots (and, as configured, a `+tag`) of gmail.com / googlemail.com
//!   addresses: the ledger keeps those two hashes besides `email_sha256` (schema v5), and an
//!   entry logged before that has no Google hash to send.

use relay_delivery::Outcome;

use crate::client::AudiencesSink;
use crate::meta::Session;
use crate::request::{merge, Member, Op};

/// The ledger hash an audience's platform knows an address by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerHash {
    /// `email_sha256`: SHA-256 of the trimmed, lowercased address.
    Email,
    /// `google_email_sha256`, or `google_email_plus_sha256` where that exists and the audience
    /// removes `+tag`s.
    Google { plus_removed: bool },
}

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
    /// The audiences of this sink.
    pub fn audience_names(&self) -> Vec<String> {
        self.config.audiences.keys().cloned().collect()
    }

    /// Which of the ledger's hashes of an address `audience`'s platform matches.
    pub fn ledger_hash(&self, audience: &str) -> LedgerHash {
        self.config
            .audiences
            .get(audience)
            .map_or(LedgerHash::Email, |a| a.platform().ledger_hash())
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

    /// Removes `hashes` (lowercase hex SHA-256 as [`Self::ledger_hash`] says, at most
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
        for outcome in answer.into_outcomes() {
            merge(&mut worst, outcome);
        }
        worst.unwrap_or(Outcome::Applied)
    }
}
