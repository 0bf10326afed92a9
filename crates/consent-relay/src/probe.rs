//! `config check --connect`: whether this process reaches what its configuration names (the
//! broker and its topics, the ledger and its schema, each enabled destination's API), each probe
//! bounded to seconds and naming its target without credentials. It changes nothing: the
//! ledger is opened read-only, the broker asked for metadata, a downstream sent a `HEAD /`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::config::Config;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// One probe: what was asked of which target, and what came back.
pub struct Probe {
    pub what: String,
    pub target: String,
    pub outcome: Result<String, String>,
}

/// Every probe, in a fixed order: broker, ledger, the enabled sinks' destinations.
pub async fn all(config: &Config) -> Vec<Probe> {
    let mut out = broker(config).await;
    out.push(ledger(config).await);
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    for entry in config.sinks.iter().filter(|e| e.settings.enabled) {
        for (destination, url) in entry.config.endpoints() {
            out.push(downstream(&http, destination, &url).await);
        }
    }
    out
}

async fn broker(config: &Config) -> Vec<Probe> {
    let kafka = config.kafka.clone();
    let target = kafka.bootstrap_servers.clone();
    let mut topics = kafka.topics.clone();
    topics.push(kafka.dlq_topic.clone());
    let asked = tokio::task::spawn_blocking(move || {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
            .set("group.id", format!("{}.config-check", kafka.group_prefix));
        for (k, v) in &kafka.properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create()?;
        consumer.fetch_metadata(None, BROKER_TIMEOUT)
    })
    .await;
    let metadata = match asked {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            return vec![Probe {
                what: "broker".into(),
                target,
                outcome: Err(format!("no metadata within {BROKER_TIMEOUT:?}: {e}")),
            }]
        }
        Err(e) => {
            return vec![Probe {
                what: "broker".into(),
                target,
                outcome: Err(e.to_string()),
            }]
        }
    };
    let mut out = vec![Probe {
        what: "broker".into(),
        target: target.clone(),
        outcome: Ok(format!("{} broker(s)", metadata.brokers().len())),
    }];
    for topic in topics {
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        out.push(Probe {
            what: "topic".into(),
            target: topic.clone(),
            outcome: match found {
                Some(t) if t.error().is_none() => {
                    Ok(format!("{} partition(s)", t.partitions().len()))
                }
                Some(t) => Err(match t.error() {
                    Some(e) => rdkafka::types::RDKafkaErrorCode::from(e).to_string(),
                    None => "unknown error".to_owned(),
                }),
                None => Err("missing, or not visible to this principal (Describe ACL; the relay never creates it: see deploy/README.md \"Topics\")".into()),
            },
        });
    }
    out
}

async fn ledger(config: &Config) -> Probe {
    let target = relay_ledger::redact(&config.ledger.url);
    let asked = tokio::time::timeout(LEDGER_TIMEOUT, async {
        let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
        let applied = ledger.applied_migrations().await;
        ledger.close().await;
        applied
    })
    .await;
    // Opening read-only checks that the schema is the one this version writes.
    let outcome = match asked {
        Ok(Ok(a)) => Ok(format!("schema version {}", a.last().copied().unwrap_or(0))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {LEDGER_TIMEOUT:?}")),
    };
    Probe {
        what: "ledger".into(),
        target,
        outcome,
    }
}

/// Any HTTP answer means the API is reachable; the origin only, so no token in a path is sent
/// or printed.
async fn downstream(http: &reqwest::Client, destination: String, url: &str) -> Probe {
    let origin = origin(url);
    let outcome = match http.head(format!("{origin}/")).send().await {
        Ok(answer) => Ok(format!("answered {}", answer.status().as_u16())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {HTTP_TIMEOUT:?}")),
        Err(e) if e.is_connect() => Err("connection refused or unreachable".into()),
        Err(e) => Err(e.to_string()),
    };
    Probe {
        what: destination,
        target: origin,
        outcome,
    }
}

/// `scheme://host[:port]` of `url`, without user info.
fn origin(url: &str) -> String {
    let scheme = url.split_once("://").map_or("https", |(s, _)| s);
    format!("{scheme}://{}", crate::sinks::host(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_hold_no_path_and_no_credentials() {
        assert_eq!(
            origin("https://user:pw@hooks.in-gmbh.de/t/0123?x=1"),
            "https://hooks.in-gmbh.de"
        );
        assert_eq!(origin("http://127.0.0.1:8080/3.0"), "http://127.0.0.1:8080");
    }
}
