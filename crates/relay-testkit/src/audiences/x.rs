//! A fake X Ads API custom audience users endpoint (docs/vendors/x.md §5):
//! `POST /{version}/accounts/{account_id}/custom_audiences/{id}/users` with a JSON array of
//! `Update` / `Delete` operations, all-or-nothing, answered with `success_count` and `total_count`
//! (records = users).
//!
//! Every request must be signed with OAuth 1.0a (RFC 5849, HMAC-SHA1) by the four credentials the
//! fake was started with. The fake recomputes the signature from the method, the URL (`http`, the
//! `Host` header, the path), the query and the `oauth_*` parameters of the `Authorization` header,
//! with its own implementation, and answers 401 `UNAUTHORIZED_ACCESS` when the header is missing
//! or malformed, a credential or the signature does not match, the timestamp is more than 300 s
//! off, or a nonce comes back.
//!
//! Decided here: only `email` user identifiers are supported.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;

use super::{
    is_sha256_hex, json_response, lock, parse_form, FakePlatform, ScriptedResponse, Shared,
};

/// X's limit on operations per request.
pub const MAX_OPERATIONS: usize = 2_500;
/// X's limit on the request body.
pub const MAX_BODY_BYTES: usize = 5_000_000;

/// How far a request's `oauth_timestamp` may be from the fake's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The four OAuth 1.0a credentials the fake accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub access_token: String,
    pub access_token_secret: String,
}

impl OAuthCredentials {
    pub fn new(
        consumer_key: &str,
        consumer_secret: &str,
        access_token: &str,
        access_token_secret: &str,
    ) -> Self {
        OAuthCredentials {
            consumer_key: consumer_key.to_owned(),
            consumer_secret: consumer_secret.to_owned(),
            access_token: access_token.to_owned(),
            access_token_secret: access_token_secret.to_owned(),
        }
    }
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("access_token", &self.access_token)
            .finish_non_exhaustive()
    }
}

/// Starts a fake X Ads API on a free port of 127.0.0.1 that accepts requests signed with
/// `credentials`.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start_oauth(credentials: OAuthCredentials) -> FakePlatform {
    start_oauth_on(SocketAddr::from(([127, 0, 0, 1], 0)), credentials)
        .await
        .expect("bind the fake X on 127.0.0.1")
}

/// Starts the fake on `addr`, accepting requests signed with `credentials`.
pub async fn start_oauth_on(
    addr: SocketAddr,
    credentials: OAuthCredentials,
) -> std::io::Result<FakePlatform> {
    let access_token = credentials.access_token.clone();
    let verifier = Arc::new(Verifier {
        credentials,
        seen: Mutex::new(HashSet::new()),
    });
    let routes = Router::new()
        .route(
            "/{version}/accounts/{account_id}/custom_audiences/{audience_id}/users",
            post(users),
        )
        .layer(Extension(verifier));
    FakePlatform::serve(
        addr,
        routes,
        &access_token,
        MAX_OPERATIONS,
        rate_limited,
        "X",
    )
    .await
}

/// X's 401, with its error body and the (empty) echo of the request parameters.
pub fn unauthorized(message: &str) -> ScriptedResponse {
    ScriptedResponse::json(401, unauthorized_body(message), Vec::new())
}

fn unauthorized_body(message: &str) -> Value {
    json!({
        "errors": [{ "code": "UNAUTHORIZED_ACCESS", "message": message }],
        "request": { "params": {} },
    })
}

/// The fake's credentials and the nonces it has accepted (with their timestamps).
struct Verifier {
    credentials: OAuthCredentials,
    seen: Mutex<HashSet<(String, String)>>,
}

impl Verifier {
    /// Checks the request's OAuth 1.0a signature; accepted nonces cannot be used again.
    fn check(
        &self,
        method: &Method,
        host: Option<&str>,
        uri: &Uri,
        authorization: Option<&str>,
    ) -> Result<(), String> {
        let host = host.ok_or("no Host header")?;
        let base_uri = format!("http://{}{}", host.to_ascii_lowercase(), uri.path());
        let query = uri.query().unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let oauth = verify_oauth1(
            &self.credentials,
            method.as_str(),
            &base_uri,
            query,
            authorization,
            now,
        )?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.insert((
            oauth["oauth_timestamp"].clone(),
            oauth["oauth_nonce"].clone(),
        )) {
            return Err("oauth_nonce was already used".to_owned());
        }
        Ok(())
    }
}

/// Verifies an OAuth 1.0a HMAC-SHA1 `Authorization` header (RFC 5849 §3) of a request to
/// `base_uri` (scheme, host, path; already normalized) with the raw `query` string, as of `now`
/// (epoch seconds). Returns the decoded `oauth_*` parameters, or why the request is refused.
pub fn verify_oauth1(
    credentials: &OAuthCredentials,
    method: &str,
    base_uri: &str,
    query: &str,
    authorization: Option<&str>,
    now: u64,
) -> Result<BTreeMap<String, String>, String> {
    let header = authorization.ok_or("no Authorization header")?;
    let oauth = parse_authorization(header)?;
    let field = |name: &str| {
        oauth
            .get(name)
            .map(String::as_str)
            .ok_or(format!("{name} is missing"))
    };
    if field("oauth_consumer_key")? != credentials.consumer_key {
        return Err("unknown oauth_consumer_key".to_owned());
    }
    if field("oauth_token")? != credentials.access_token {
        return Err("unknown oauth_token".to_owned());
    }
    if field("oauth_signature_method")? != "HMAC-SHA1" {
        return Err("oauth_signature_method must be HMAC-SHA1".to_owned());
    }
    if oauth.get("oauth_version").is_some_and(|v| v != "1.0") {
        return Err("oauth_version must be 1.0".to_owned());
    }
    if field("oauth_nonce")?.is_empty() {
        return Err("oauth_nonce is empty".to_owned());
    }
    let timestamp: u64 = field("oauth_timestamp")?
        .parse()
        .map_err(|_| "oauth_timestamp is not a number".to_owned())?;
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(format!(
            "oauth_timestamp {timestamp} is more than {MAX_CLOCK_SKEW_SECS} s from now ({now})"
        ));
    }
    let claimed = STANDARD
        .decode(field("oauth_signature")?)
        .map_err(|_| "oauth_signature is not base64".to_owned())?;

    // The query parameters and every protocol parameter but the signature itself (and the realm).
    let mut params: Vec<(String, String)> = parse_form(query)
        .into_iter()
        .chain(
            oauth
                .iter()
                .filter(|(name, _)| *name != "oauth_signature")
                .map(|(n, v)| (n.clone(), v.clone())),
        )
        .map(|(n, v)| (encode(&n), encode(&v)))
        .collect();
    params.sort();
    let normalized = params
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let base = format!(
        "{}&{}&{}",
        encode(&method.to_ascii_uppercase()),
        encode(base_uri),
        encode(&normalized)
    );
    let key = format!(
        "{}&{}",
        encode(&credentials.consumer_secret),
        encode(&credentials.access_token_secret)
    );
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(base.as_bytes());
    mac.verify_slice(&claimed)
        .map_err(|_| "oauth_signature does not match".to_owned())?;
    Ok(oauth)
}

/// `OAuth name="value", …` → decoded pairs; `realm` is dropped, a repeated name is an error.
fn parse_authorization(header: &str) -> Result<BTreeMap<String, String>, String> {
    let (scheme, rest) = header
        .trim()
        .split_once(' ')
        .ok_or("Authorization is not OAuth")?;
    if !scheme.eq_ignore_ascii_case("OAuth") {
        return Err("Authorization is not OAuth".to_owned());
    }
    let mut params = BTreeMap::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let malformed = || format!("malformed OAuth parameter {part:?}");
        let (name, quoted) = part.split_once('=').ok_or_else(malformed)?;
        let value = quoted
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(malformed)?;
        let name = decode(name.trim()).ok_or_else(malformed)?;
        let value = decode(value).ok_or_else(malformed)?;
        if name == "realm" {
            continue;
        }
        if params.insert(name.clone(), value).is_some() {
            return Err(format!("{name} appears more than once"));
        }
    }
    Ok(params)
}

/// RFC 5849 §3.6 / RFC 3986: everything but `ALPHA DIGIT - . _ ~` as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Strict percent-decoding (no `+` for space); `None` on a broken escape or invalid UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// X's 429, with the end of the window in `x-rate-limit-reset` (epoch seconds, a minute ahead).
pub fn rate_limited() -> ScriptedResponse {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 60)
        .unwrap_or_default();
    ScriptedResponse::json(
        429,
        errors(&[("TOO_MANY_REQUESTS", "Rate limit exceeded")]),
        vec![("x-rate-limit-reset".to_owned(), reset.to_string())],
    )
}

fn errors(list: &[(&str, &str)]) -> Value {
    json!({
        "errors": list
            .iter()
            .map(|(code, message)| json!({ "code": code, "message": message }))
            .collect::<Vec<_>>(),
    })
}

fn bad_request(code: &str, message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, errors(&[(code, message)]))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Operation {
    operation_type: String,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    users: Vec<User>,
    effective_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    email: Vec<String>,
}

async fn users(
    State(shared): State<Shared>,
    Extension(verifier): Extension<Arc<Verifier>>,
    Path((_version, account_id, audience_id)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = verifier.check(
        &method,
        text(header::HOST),
        &uri,
        text(header::AUTHORIZATION),
    ) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            unauthorized_body(&format!(
                "This request is not properly authenticated: {why}"
            )),
        );
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return bad_request("INVALID_PARAMETER", "Content-Type must be application/json");
    }
    if body.len() > MAX_BODY_BYTES {
        return bad_request(
            "INVALID_PARAMETER",
            "The request body exceeds 5000000 bytes",
        );
    }
    let operations: Vec<Operation> = match serde_json::from_slice(&body) {
        Ok(operations) => operations,
        Err(e) => return bad_request("INVALID_PARAMETER", &format!("Invalid JSON: {e}")),
    };
    let mut state = lock(&shared);
    if operations.is_empty() || operations.len() > state.max_batch {
        return bad_request(
            "INVALID_PARAMETER",
            &format!("Max batch size is {}", state.max_batch),
        );
    }

    // All-or-nothing: check every operation before changing anything.
    let mut operation_errors: Vec<Value> = Vec::with_capacity(operations.len());
    for (i, op) in operations.iter().enumerate() {
        let problem = if op.operation_type != "Update" && op.operation_type != "Delete" {
            Some("operation_type must be Update or Delete")
        } else if op.params.users.is_empty() || op.params.users.iter().any(|u| u.email.is_empty()) {
            Some("users need at least one identifier")
        } else if op.params.effective_at.is_some() || op.params.expires_at.is_some() {
            Some("this fake supports neither effective_at nor expires_at")
        } else if op
            .params
            .users
            .iter()
            .flat_map(|u| &u.email)
            .any(|h| !is_sha256_hex(h))
        {
            state.reject(format!("x operations[{i}]: not a lowercase hex SHA-256"));
            Some("email must be a lowercase hex SHA-256")
        } else {
            None
        };
        operation_errors.push(match problem {
            Some(message) => json!([{ "code": "INVALID_USER_DATA", "message": message }]),
            None => Value::Null,
        });
    }
    if operation_errors.iter().any(|e| !e.is_null()) {
        let mut body = errors(&[("INVALID_PARAMETER", "One or more operations are invalid")]);
        body["operation_errors"] = Value::Array(operation_errors);
        return json_response(StatusCode::BAD_REQUEST, body);
    }

    let mut records = 0;
    let audience = state.audience(&audience_id);
    for op in operations {
        for user in op.params.users {
            records += 1;
            for hash in user.email {
                if op.operation_type == "Update" {
                    audience.insert(hash);
                } else {
                    audience.remove(&hash);
                }
            }
        }
    }
    drop(state);
    json_response(
        StatusCode::OK,
        json!({
            "request": { "params": { "account_id": account_id, "custom_audience_id": audience_id } },
            "data": { "success_count": records, "total_count": records },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// developer.x.com, "Creating a signature": its `status` form parameter moved to the query,
    /// which leaves the signature base string, and so the signature, as documented.
    const HEADER: &str = "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", \
        oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", \
        oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\", oauth_signature_method=\"HMAC-SHA1\", \
        oauth_timestamp=\"1318622958\", \
        oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", oauth_version=\"1.0\"";
    const URI: &str = "https://api.twitter.com/1.1/statuses/update.json";
    const QUERY: &str = "include_entities=true\
        &status=Hello%20Ladies%20%2B%20Gentlemen%2C%20a%20signed%20OAuth%20request%21";
    const TIMESTAMP: u64 = 1_318_622_958;

    fn twitter() -> OAuthCredentials {
        OAuthCredentials::new(
            "xvz1evFS4wEEPTGEFPHBog",
            "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
            "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
            "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
        )
    }

    fn verify(
        credentials: &OAuthCredentials,
        query: &str,
        header: Option<&str>,
        now: u64,
    ) -> Result<(), String> {
        verify_oauth1(credentials, "POST", URI, query, header, now).map(|_| ())
    }

    #[test]
    fn twitters_documented_request_verifies() {
        let oauth = verify_oauth1(&twitter(), "POST", URI, QUERY, Some(HEADER), TIMESTAMP).unwrap();
        assert_eq!(oauth["oauth_signature"], "hCtSmYh+iHYCEqBWrE7C7hYmtUk=");
        // Within the allowed skew either way.
        assert_eq!(
            verify(&twitter(), QUERY, Some(HEADER), TIMESTAMP + 300),
            Ok(())
        );
        assert_eq!(
            verify(&twitter(), QUERY, Some(HEADER), TIMESTAMP - 300),
            Ok(())
        );
        // A realm is ignored.
        let with_realm = HEADER.replacen("OAuth ", "OAuth realm=\"X\", ", 1);
        assert_eq!(
            verify(&twitter(), QUERY, Some(&with_realm), TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn anything_off_is_refused() {
        let refused = |credentials: &OAuthCredentials, query: &str, header: Option<&str>, now| {
            verify(credentials, query, header, now).unwrap_err()
        };
        let c = twitter();
        let wrong_secret = OAuthCredentials {
            access_token_secret: "other".into(),
            ..twitter()
        };
        let wrong_key = OAuthCredentials {
            consumer_key: "other".into(),
            ..twitter()
        };
        let h = Some(HEADER);
        assert!(refused(&c, QUERY, None, TIMESTAMP).contains("no Authorization"));
        assert!(refused(&c, QUERY, Some("Bearer t"), TIMESTAMP).contains("not OAuth"));
        assert!(refused(&c, QUERY, h, TIMESTAMP + 301).contains("more than 300 s"));
        assert!(refused(&c, QUERY, h, TIMESTAMP - 301).contains("more than 300 s"));
        assert!(refused(&wrong_secret, QUERY, h, TIMESTAMP).contains("does not match"));
        assert!(refused(&wrong_key, QUERY, h, TIMESTAMP).contains("oauth_consumer_key"));
        assert!(refused(&c, "include_entities=true", h, TIMESTAMP).contains("does not match"));
        let changed_nonce = HEADER.replace("kYjzVBB8", "kYjzVBB9");
        assert!(refused(&c, QUERY, Some(&changed_nonce), TIMESTAMP).contains("does not match"));
        let no_token = HEADER.replace("oauth_token=", "oauth_tokens=");
        assert!(refused(&c, QUERY, Some(&no_token), TIMESTAMP).contains("oauth_token is missing"));
        let twice = format!("{HEADER}, oauth_nonce=\"x\"");
        assert!(refused(&c, QUERY, Some(&twice), TIMESTAMP).contains("more than once"));
        let plaintext = HEADER.replace("HMAC-SHA1", "PLAINTEXT");
        assert!(refused(&c, QUERY, Some(&plaintext), TIMESTAMP).contains("HMAC-SHA1"));
    }

    #[test]
    fn the_verifier_checks_against_the_clock() {
        let verifier = Verifier {
            credentials: twitter(),
            seen: Mutex::new(HashSet::new()),
        };
        // The verifier checks against the clock, so the documented request is too old for it.
        let uri: Uri = format!("/1.1/statuses/update.json?{QUERY}")
            .parse()
            .unwrap();
        let err = verifier
            .check(&Method::POST, Some("api.twitter.com"), &uri, Some(HEADER))
            .unwrap_err();
        assert!(err.contains("more than 300 s"), "{err}");
        assert!(verifier.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("a%2Bb+c").as_deref(), Some("a+b+c"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(encode("a b+~"), "a%20b%2B~");
    }
}
