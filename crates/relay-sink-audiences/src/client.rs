use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use relay_delivery::driver::{self, Part, Transport};
use relay_delivery::{BoxFuture, ConfigError, Destination, Outcome, Sink, SinkItem};

use crate::config::{AudienceConfig, AudiencesConfig};
use crate::meta::Session;
use crate::request::{self, Answer, Body, HttpCall, Member, Op};

/// The audiences sink: hashed identifiers into Meta, Google, LinkedIn, X and generic audiences.
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

    /// The requests of one delivery, in the order they go: every audience's removals before any
    /// adds (a withdrawal never waits behind a grant, nor behind a rate limit a grant ran into),
    /// one audience after the other, at most the platform's batch size each. One chain, so that
    /// an audience has one writer.
    fn requests(&self, audiences: Vec<request::AudienceWork<'_>>) -> Vec<Batch> {
        let (removes, adds): (Vec<_>, Vec<_>) = audiences
            .into_iter()
            .map(|w| ((w.name, Op::Remove, w.removes), (w.name, Op::Add, w.adds)))
            .unzip();
        let mut requests = Vec::new();
        for (name, op, members) in removes.into_iter().chain(adds) {
            let audience = &self.config.audiences[name];
            let account = self.account_of[name];
            let total = members.len();
            let chunks = total.div_ceil(audience.batch_size());
            let session_id = fastrand::u64(1..);
            let mut members = members.into_iter();
            for seq in 0..chunks {
                requests.push(Batch {
                    name: name.to_owned(),
                    account,
                    op,
                    members: members.by_ref().take(audience.batch_size()).collect(),
                    session: (chunks > 1).then_some(Session {
                        id: session_id,
                        seq: seq + 1,
                        last: seq + 1 == chunks,
                        total,
                    }),
                });
            }
        }
        requests
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
        let call = audience.platform().call(op, batch, session);
        let destination = &self.accounts[account];
        let reply = match destination
            .send(build(destination.http(), call, audience))
            .await
        {
            Ok(reply) => reply,
            // Unreachable or out of budget: the driver sends this account nothing more (a request
            // that could not even be built is permanent, and this batch's alone).
            Err(outcome) => return Answer::whole(outcome, batch.len()),
        };
        let answer = audience.platform().answer(&reply, batch.len());
        tracing::debug!(
            sink = "audiences",
            audience = name,
            platform = audience.platform().name(),
            op = op.name(),
            members = batch.len(),
            status = reply.status,
            stops = answer.stops_lane(),
            "platform answered"
        );
        if answer.stops_lane() {
            // Body-signalled limits (Meta) carry no Retry-After header for the destination to see.
            if let Some(Outcome::Unavailable {
                after: Some(after), ..
            }) = answer.outcomes().first()
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
            audience.platform().name(),
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
        Body::Json(value) => match audience
            .platform()
            .authorization(&call.method, &call.url, token)
        {
            Some(authorization) => match reqwest::header::HeaderValue::from_str(&authorization) {
                // Kept out of the request's Debug, as bearer_auth does.
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.header(reqwest::header::AUTHORIZATION, value)
                }
                // Not a header value: the builder fails the request, naming the problem.
                Err(_) => request.header(reqwest::header::AUTHORIZATION, authorization),
            },
            None => request,
        }
        .json(&value),
        Body::Form {
            mut pairs,
            token_field,
        } => {
            pairs.push((token_field, token.to_owned()));
            request.form(&pairs)
        }
    }
}

/// One request to one audience, for the driver: the platform account is the lane. Members are
/// not held back per person: an audience's removals go before its adds, and an add of an
/// identifier that leaves in the same delivery is held back by the plan.
pub struct Batch {
    name: String,
    account: usize,
    op: Op,
    members: Vec<Member>,
    session: Option<Session>,
}

impl driver::Request for Batch {
    fn lane(&self) -> usize {
        self.account
    }

    fn parts(&self) -> Vec<Part<'_>> {
        self.members
            .iter()
            .map(|m| Part {
                items: &m.items,
                person: None,
            })
            .collect()
    }

    fn retain(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool {
        driver::retain_positions(&mut self.members, keep)
    }
}

impl Transport for AudiencesSink {
    type Request = Batch;

    fn who(&self, _lane: usize) -> &str {
        "the audience's platform account"
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Answer> {
        let audience = &self.config.audiences[&batch.name];
        Box::pin(AudiencesSink::send(
            self,
            &batch.name,
            audience,
            batch.account,
            batch.op,
            &batch.members,
            batch.session,
        ))
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
        let request::Plan { settled, audiences } = request::plan(items, &self.config);
        let requests = self.requests(audiences);
        Box::pin(driver::deliver(self, settled, vec![requests]))
    }

    fn destinations(&self) -> Vec<&Destination> {
        self.accounts.iter().map(|d| d.as_ref()).collect()
    }
}
