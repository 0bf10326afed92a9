use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use relay_delivery::{BoxFuture, ConfigError, Destination, Outcome, Sink, SinkItem};

use crate::config::{AudienceConfig, AudiencesConfig};
use crate::meta::Session;
use crate::request::{self, merge, Answer, Body, HttpCall, Member, Op};
use crate::{google, linkedin, meta, x};

/// The audiences sink: hashed identifiers into Meta, Google, LinkedIn and X audiences.
pub struct AudiencesSink {
    /// `audiences`, or `audiences.<audience>` for a sink of one audience.
    name: String,
    pub(crate) config: AudiencesConfig,
    /// One per platform account (platform, base URL, token): audiences on one account share its
    /// rate limit, daily budget and `Retry-After` pause, also across per-audience sinks.
    accounts: Vec<Arc<Destination>>,
    /// Audience name → index into `accounts`.
    pub(crate) account_of: BTreeMap<String, usize>,
}

impl AudiencesSink {
    /// Validates `config` and builds one sink for all its audiences, with one HTTP client per
    /// platform account.
    pub fn new(config: AudiencesConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let (accounts, account_of) = accounts(&config)?;
        Ok(AudiencesSink {
            name: "audiences".to_owned(),
            config,
            accounts,
            account_of,
        })
    }

    /// Validates `config` and builds one sink per audience, named `audiences.<audience>`, each
    /// with the purposes that route to it. Audiences on one platform account share its HTTP client
    /// and limits.
    pub fn per_audience(config: AudiencesConfig) -> Result<Vec<AudiencesSink>, ConfigError> {
        config.validate()?;
        let (accounts, account_of) = accounts(&config)?;
        Ok(config
            .audiences
            .keys()
            .map(|name| {
                let index = account_of[name];
                AudiencesSink {
                    name: format!("audiences.{name}"),
                    config: config.only(name),
                    accounts: vec![accounts[index].clone()],
                    account_of: BTreeMap::from([(name.clone(), 0)]),
                }
            })
            .collect())
    }

    /// The purposes that route to this sink.
    pub fn purposes(&self) -> std::collections::BTreeSet<String> {
        self.config.purposes.keys().cloned().collect()
    }

    async fn deliver_items(&self, items: &[SinkItem]) -> Vec<Outcome> {
        let request::Plan {
            mut settled,
            audiences,
        } = request::plan(items, &self.config);
        // Accounts that must not be asked again in this delivery (rate-limited, refusing us, or
        // unreachable), with the outcome their remaining members get instead.
        let mut blocked: HashMap<usize, Outcome> = HashMap::new();

        // One audience at a time, and its requests one after the other: one writer per audience.
        for work in audiences {
            let audience = &self.config.audiences[work.name];
            let account = self.account_of[work.name];
            for (op, members) in [(Op::Remove, work.removes), (Op::Add, work.adds)] {
                let batches: Vec<&[Member]> = members.chunks(audience.batch_size()).collect();
                let session_id = fastrand::u64(1..);
                for (seq, batch) in batches.iter().enumerate() {
                    let outcomes = match blocked.get(&account) {
                        Some(outcome) => vec![outcome.clone(); batch.len()],
                        None => {
                            let session = (batches.len() > 1).then_some(Session {
                                id: session_id,
                                seq: seq + 1,
                                last: seq + 1 == batches.len(),
                                total: members.len(),
                            });
                            let answer = self
                                .send(work.name, audience, account, op, batch, session)
                                .await;
                            if let Some(outcome) = blocking(&answer) {
                                blocked.insert(account, outcome);
                            }
                            answer.outcomes
                        }
                    };
                    for (member, outcome) in batch.iter().zip(outcomes) {
                        for &item in &member.items {
                            merge(&mut settled[item], outcome.clone());
                        }
                    }
                }
            }
        }

        settled
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retryable("no request covered this item")))
            .collect()
    }

    /// Sends one batch and maps the answer to one outcome per member.
    pub(crate) async fn send(
        &self,
        name: &str,
        audience: &AudienceConfig,
        account: usize,
        op: Op,
        batch: &[Member],
        session: Option<Session>,
    ) -> Answer {
        let call = match audience {
            AudienceConfig::Meta(a) => meta::call(a, op, batch, session),
            AudienceConfig::Google(a) => google::call(a, op, batch),
            AudienceConfig::Linkedin(a) => linkedin::call(a, op, batch),
            AudienceConfig::X(a) => x::call(a, op, batch),
        };
        let destination = &self.accounts[account];
        let reply = match destination
            .send(build(destination.http(), call, audience))
            .await
        {
            Ok(reply) => reply,
            Err(outcome) => {
                let mut answer = Answer::all(outcome, batch.len());
                // Unreachable or out of budget: the next request would fare no better.
                answer.stop = true;
                return answer;
            }
        };
        let answer = match audience {
            AudienceConfig::Meta(_) => meta::answer(&reply, batch.len()),
            AudienceConfig::Google(_) => google::answer(&reply, batch.len()),
            AudienceConfig::Linkedin(_) => linkedin::answer(&reply, batch.len()),
            AudienceConfig::X(_) => x::answer(&reply, batch.len()),
        };
        tracing::debug!(
            sink = "audiences",
            audience = name,
            platform = audience.platform().name(),
            op = op.name(),
            members = batch.len(),
            status = reply.status,
            stop = answer.stop,
            "platform answered"
        );
        if answer.stop {
            // Body-signalled limits (Meta) carry no Retry-After header for the destination to see.
            if let Some(Outcome::Unavailable {
                after: Some(after), ..
            }) = answer.outcomes.first()
            {
                destination.pause_for(*after);
            }
        }
        answer
    }
}

type Accounts = (Vec<Arc<Destination>>, BTreeMap<String, usize>);

/// One HTTP front per platform account (platform, base URL, credential), and which one each
/// audience uses.
fn accounts(config: &AudiencesConfig) -> Result<Accounts, ConfigError> {
    let mut accounts = Vec::new();
    let mut account_of = BTreeMap::new();
    let mut known = HashMap::new();
    for (name, audience) in &config.audiences {
        let key = (
            audience.platform(),
            audience.base_url(),
            audience.account_credential().unwrap_or_default(),
        );
        let index = match known.get(&key) {
            Some(&index) => index,
            None => {
                accounts.push(Arc::new(
                    Destination::new(audience.limits().clone()).map_err(ConfigError::Client)?,
                ));
                known.insert(key, accounts.len() - 1);
                accounts.len() - 1
            }
        };
        account_of.insert(name.clone(), index);
    }
    Ok((accounts, account_of))
}

/// The outcome for the rest of an account's requests in this delivery, if this answer means they
/// should not be sent: a rate limit, a transport failure, or a refusal of our credentials.
fn blocking(answer: &Answer) -> Option<Outcome> {
    let cause = if answer.stop {
        answer.outcomes.first()?
    } else {
        answer
            .outcomes
            .iter()
            .find(|o| matches!(o, Outcome::Refused { .. }))?
    };
    let not_sent =
        |reason: &str| format!("not sent: an earlier request to this account failed: {reason}");
    Some(match cause {
        Outcome::Unavailable { after, reason } => Outcome::Unavailable {
            after: *after,
            reason: not_sent(reason),
        },
        Outcome::Refused { reason } => Outcome::Refused {
            reason: not_sent(reason),
        },
        // The request that went may still land; the ones not sent certainly will not.
        Outcome::Unknown { reason } => Outcome::Unavailable {
            after: None,
            reason: not_sent(reason),
        },
        // A request that could not even be built fails the same way for every batch.
        other => other.clone(),
    })
}

/// The request with its credentials: X's OAuth 1.0a signature (made here, just before sending, so
/// that its timestamp is fresh), or the token as bearer or form field.
fn build(
    http: &reqwest::Client,
    call: HttpCall,
    audience: &AudienceConfig,
) -> reqwest::RequestBuilder {
    // validate() has checked that every audience has its credentials.
    let token = audience.token().unwrap_or_default();
    let mut request = http.request(call.method.clone(), &call.url);
    for (name, value) in call.headers {
        request = request.header(name, value);
    }
    match call.body {
        Body::Json(value) => match audience {
            AudienceConfig::X(a) => match x::authorization(a, &call.method, &call.url) {
                Some(signed) => request.header(reqwest::header::AUTHORIZATION, signed),
                None => request,
            }
            .json(&value),
            _ => request.bearer_auth(token).json(&value),
        },
        Body::Form {
            mut pairs,
            token_field,
        } => {
            pairs.push((token_field, token.to_owned()));
            request.form(&pairs)
        }
    }
}

impl Sink for AudiencesSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.deliver_items(items))
    }

    fn destinations(&self) -> Vec<&Destination> {
        self.accounts.iter().map(|d| d.as_ref()).collect()
    }
}
