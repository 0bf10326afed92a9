//! OAuth 1.0a request signing with HMAC-SHA1 (RFC 5849 §3), which the X Ads API requires.
//!
//! Pure functions: the nonce and the timestamp are inputs, so a signature can be checked against
//! a known answer. Only the query string and the `oauth_*` parameters are signed; a JSON body is
//! not part of the signature (RFC 5849 §3.4.1.3.1 signs form bodies only), so callers with a JSON
//! body pass no extra parameters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha1::Sha1;

/// The four credentials of an OAuth 1.0a user context.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub consumer_key: &'a str,
    pub consumer_secret: &'a str,
    pub token: &'a str,
    pub token_secret: &'a str,
}

/// `Authorization: OAuth …` for one request: the `oauth_*` parameters and their signature, each
/// value percent-encoded, in name order.
///
/// `extra` are further parameters the request carries outside the query string and that must be
/// signed (decoded form-body pairs); requests with a JSON body pass none.
pub fn authorization(
    credentials: &Credentials<'_>,
    method: &str,
    url: &Url,
    extra: &[(&str, &str)],
    nonce: &str,
    timestamp: u64,
) -> String {
    let signature = signature(credentials, method, url, extra, nonce, timestamp);
    let timestamp = timestamp.to_string();
    let mut oauth = protocol_params(credentials, nonce, &timestamp);
    oauth.push(("oauth_signature", &signature));
    oauth.sort_unstable();
    let fields: Vec<String> = oauth
        .iter()
        .map(|(name, value)| format!("{}=\"{}\"", encode(name), encode(value)))
        .collect();
    format!("OAuth {}", fields.join(", "))
}

/// The `oauth_signature` of a request (RFC 5849 §3.4.2): base64 of HMAC-SHA1 over the signature
/// base string, keyed with the encoded consumer secret and token secret.
pub fn signature(
    credentials: &Credentials<'_>,
    method: &str,
    url: &Url,
    extra: &[(&str, &str)],
    nonce: &str,
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let oauth = protocol_params(credentials, nonce, &timestamp);
    sign(credentials, method, url, extra, &oauth)
}

/// A fresh nonce: 32 random letters and digits.
pub fn nonce() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn protocol_params<'a>(
    credentials: &Credentials<'a>,
    nonce: &'a str,
    timestamp: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("oauth_consumer_key", credentials.consumer_key),
        ("oauth_nonce", nonce),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", timestamp),
        ("oauth_token", credentials.token),
        ("oauth_version", "1.0"),
    ]
}

fn sign(
    credentials: &Credentials<'_>,
    method: &str,
    url: &Url,
    extra: &[(&str, &str)],
    oauth: &[(&str, &str)],
) -> String {
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let params = query
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(extra.iter().copied())
        .chain(oauth.iter().copied());
    let base = signature_base_string(method, url, params);
    let key = format!(
        "{}&{}",
        encode(credentials.consumer_secret),
        encode(credentials.token_secret)
    );
    let mut mac =
        Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(base.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// RFC 5849 §3.4.1.1: the upper-case method, the base string URI and the normalized parameters,
/// each percent-encoded, joined with `&`. `params` are decoded name/value pairs.
pub fn signature_base_string<'a>(
    method: &str,
    url: &Url,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    format!(
        "{}&{}&{}",
        encode(&method.to_ascii_uppercase()),
        encode(&base_string_uri(url)),
        encode(&normalized_params(params))
    )
}

/// RFC 5849 §3.4.1.2: scheme and host in lower case, the port only where it is not the scheme's
/// default, the path; no query, no fragment.
pub fn base_string_uri(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme(), url.path())
}

/// RFC 5849 §3.4.1.3.2: every name and value encoded, sorted by name and then value, `name=value`
/// joined with `&`.
fn normalized_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut encoded: Vec<(String, String)> = params
        .into_iter()
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    encoded.sort_unstable();
    encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 5849 §3.6: every byte of the UTF-8 form outside the unreserved set
/// (`ALPHA DIGIT - . _ ~`) as `%XX`, upper-case hex.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// developer.x.com, "Creating a signature" (OAuth 1.0a): a status update with a form body.
    const TWITTER: Credentials<'static> = Credentials {
        consumer_key: "xvz1evFS4wEEPTGEFPHBog",
        consumer_secret: "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
        token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
        token_secret: "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
    };
    const NONCE: &str = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg";
    const TIMESTAMP: u64 = 1_318_622_958;
    const STATUS: (&str, &str) = (
        "status",
        "Hello Ladies + Gentlemen, a signed OAuth request!",
    );

    fn twitter_url() -> Url {
        Url::parse("https://api.twitter.com/1.1/statuses/update.json?include_entities=true")
            .unwrap()
    }

    #[test]
    fn twitters_documented_example_signs_to_its_documented_signature() {
        let url = twitter_url();
        assert_eq!(
            signature(&TWITTER, "post", &url, &[STATUS], NONCE, TIMESTAMP),
            "hCtSmYh+iHYCEqBWrE7C7hYmtUk="
        );
        // The documented signature base string, too.
        let timestamp = TIMESTAMP.to_string();
        let params = protocol_params(&TWITTER, NONCE, &timestamp);
        let base = signature_base_string(
            "POST",
            &url,
            [("include_entities", "true"), STATUS]
                .into_iter()
                .chain(params),
        );
        assert_eq!(
            base,
            "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue\
             %26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\
             %26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\
             %26oauth_version%3D1.0%26status%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521"
        );
    }

    #[test]
    fn the_header_carries_the_encoded_oauth_parameters_in_name_order() {
        let header = authorization(
            &TWITTER,
            "POST",
            &twitter_url(),
            &[STATUS],
            NONCE,
            TIMESTAMP,
        );
        assert_eq!(
            header,
            "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", \
             oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", \
             oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\", \
             oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", \
             oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", \
             oauth_version=\"1.0\""
        );
        assert!(!header.contains(TWITTER.consumer_secret));
        assert!(!header.contains(TWITTER.token_secret));
    }

    #[test]
    fn base_string_uri_drops_default_ports_query_and_fragment() {
        let uri = |u: &str| base_string_uri(&Url::parse(u).unwrap());
        assert_eq!(
            uri("HTTPS://Ads-API.X.com:443/12/accounts/a?x=1#f"),
            "https://ads-api.x.com/12/accounts/a"
        );
        assert_eq!(uri("http://Example.com:80"), "http://example.com/");
        assert_eq!(
            uri("http://127.0.0.1:18085/12/x"),
            "http://127.0.0.1:18085/12/x"
        );
        assert_eq!(
            uri("https://example.com:8443/r%20v/X"),
            "https://example.com:8443/r%20v/X"
        );
    }

    #[test]
    fn parameters_sort_by_encoded_name_then_value_and_repeat() {
        // RFC 5849 §3.4.1.3.2's example, without its oauth parameters.
        let url = Url::parse("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b").unwrap();
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let params = query
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain([("c2", ""), ("a3", "2 q")]);
        assert_eq!(
            normalized_params(params),
            "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2="
        );
    }

    #[test]
    fn encoding_keeps_only_the_unreserved_set() {
        assert_eq!(encode("Az09-._~"), "Az09-._~");
        assert_eq!(encode("a b+c/=&*%"), "a%20b%2Bc%2F%3D%26%2A%25");
        assert_eq!(encode("ü☃"), "%C3%BC%E2%98%83");
    }

    #[test]
    fn nonces_are_fresh() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_json_body_is_not_signed_and_every_input_matters() {
        let url =
            Url::parse("https://ads-api.x.com/12/accounts/a/custom_audiences/b/users").unwrap();
        let base = signature(&TWITTER, "POST", &url, &[], NONCE, TIMESTAMP);
        let changed = [
            signature(&TWITTER, "PUT", &url, &[], NONCE, TIMESTAMP),
            signature(&TWITTER, "POST", &twitter_url(), &[], NONCE, TIMESTAMP),
            signature(&TWITTER, "POST", &url, &[("a", "b")], NONCE, TIMESTAMP),
            signature(&TWITTER, "POST", &url, &[], "other", TIMESTAMP),
            signature(&TWITTER, "POST", &url, &[], NONCE, TIMESTAMP + 1),
            signature(
                &Credentials {
                    token_secret: "other",
                    ..TWITTER
                },
                "POST",
                &url,
                &[],
                NONCE,
                TIMESTAMP,
            ),
        ];
        for other in changed {
            assert_ne!(base, other);
        }
    }
}
