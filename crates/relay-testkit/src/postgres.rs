//! A unique, empty PostgreSQL database per test.
//!
//! Tests run in parallel processes against one server, so each gets a database of its own rather
//! than sharing one and cleaning up between tests.

use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// The server every test database is created on; override with `CONSENT_RELAY_TEST_PG_URL`.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The URL of an existing database used to create and drop the per-test ones.
pub fn admin_url() -> String {
    std::env::var("CONSENT_RELAY_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Creates `cr_<uuid>` on the test server and returns its URL. Panics when the server is not
/// reachable: a test that needs PostgreSQL must fail loudly, not pass vacuously.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("cr_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({}): {e}", redact(&admin)));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    // Closing is a courtesy; the server cleans up a dropped socket anyway.
    let _ = conn.close().await;
    with_database(&admin, &name)
}

/// Drops a database made by [`fresh_database`], disconnecting anyone still on it. Best effort:
/// a leftover test database is harmless, so errors are ignored.
pub async fn drop_database(url: &str) {
    let Some(name) = database_name(url) else {
        return;
    };
    // Never drop something this module did not create.
    if !name.starts_with("cr_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return;
    }
    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
        let _ = conn.close().await;
    }
}

/// `url` with its database (the path) replaced by `name`, keeping any query parameters.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn database_name(url: &str) -> Option<&str> {
    let base = url.split('?').next()?;
    let authority_start = base.find("://")? + 3;
    let path = &base[authority_start..];
    let name = &path[path.find('/')? + 1..];
    (!name.is_empty()).then_some(name)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_and_parameters_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "cr_1"),
            "postgres://postgres@127.0.0.1:5432/cr_1"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "cr_1"),
            "postgres://u@h/cr_1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:1", "cr_1"),
            "postgres://u@h:1/cr_1"
        );
        assert_eq!(database_name("postgres://u@h/cr_1?x=1"), Some("cr_1"));
        assert_eq!(database_name("postgres://u@h"), None);
    }
}
