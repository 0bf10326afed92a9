//! A Confluent-compatible schema registry client: writer schemas by id, cached for the life of the
//! process (ids are immutable in the registry), and registration for `publish`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("schema registry answered HTTP {status} for {what}: {body}")]
    Status {
        status: u16,
        what: String,
        body: String,
    },
    #[error("schema {id} from the registry does not parse: {message}")]
    BadSchema { id: u32, message: String },
}

impl RegistryError {
    /// A missing schema id is the message's fault; anything else is the registry's, and a retry
    /// may succeed.
    pub fn is_unknown_schema(&self) -> bool {
        matches!(
            self,
            RegistryError::Status { status: 404, .. } | RegistryError::BadSchema { .. }
        )
    }
}

#[derive(Clone)]
pub struct SchemaRegistry {
    base_url: String,
    http: reqwest::Client,
    cache: Arc<Mutex<HashMap<u32, Arc<Schema>>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base_url", &self.base_url)
            .finish()
    }
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

#[derive(Deserialize)]
struct RegisterResponse {
    id: u32,
}

impl SchemaRegistry {
    pub fn new(base_url: &str) -> SchemaRegistry {
        SchemaRegistry {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a reqwest client with a timeout always builds"),
            cache: Arc::default(),
        }
    }

    /// The writer schema with `id` (`GET /schemas/ids/{id}`).
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.cache.lock().expect("registry cache poisoned").get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let resp = self.http.get(&url).send().await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Status {
                status,
                what: format!("schema id {id}"),
                body,
            });
        }
        let parsed: SchemaResponse = resp.json().await?;
        let schema = Schema::parse_str(&parsed.schema).map_err(|e| RegistryError::BadSchema {
            id,
            message: e.to_string(),
        })?;
        let schema = Arc::new(schema);
        self.cache
            .lock()
            .expect("registry cache poisoned")
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers `schema_json` under `subject` (`POST /subjects/{subject}/versions`) and returns
    /// its id; registering an identical schema again returns the same id.
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema_json }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Status {
                status,
                what: format!("registering subject {subject}"),
                body,
            });
        }
        Ok(resp.json::<RegisterResponse>().await?.id)
    }
}
