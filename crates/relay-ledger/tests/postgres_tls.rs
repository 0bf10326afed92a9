//! TLS to PostgreSQL (managed services require it): the URL's `sslmode` and `sslrootcert` reach
//! the connection, for the migrating and the read-only opening alike. Runs against the local test
//! server, which serves TLS with its own certificate (Debian's default `ssl = on`, a self-signed
//! certificate for `localhost`).

use sqlx::{Connection, PgConnection};

async fn admin() -> PgConnection {
    PgConnection::connect(&relay_testkit::postgres::admin_url())
        .await
        .expect("the test PostgreSQL")
}

/// How many of `database`'s sessions use TLS, as the server sees them.
async fn tls_sessions(database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = $1 AND s.ssl",
    )
    .bind(database)
    .fetch_one(&mut admin().await)
    .await
    .unwrap()
}

#[tokio::test]
async fn sslmode_and_a_ca_file_in_the_ledger_url_are_honoured() {
    let mut conn = admin().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(ssl, "on", "the test server must serve TLS (ssl = on)");
    let cert: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let url = relay_testkit::postgres::fresh_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let at_localhost = url.replacen("127.0.0.1", "localhost", 1);

    // sqlx prefers TLS when the server offers it; `disable` shows the URL's mode is the one used.
    let plain = relay_ledger::open(&format!("{url}?sslmode=disable"))
        .await
        .unwrap();
    plain.applied_migrations().await.unwrap();
    assert_eq!(tls_sessions(&database).await, 0);
    plain.close().await;

    let ledger = relay_ledger::open(&format!("{url}?sslmode=require"))
        .await
        .expect("TLS without verification");
    // A pooled session to look at.
    ledger.applied_migrations().await.unwrap();
    assert!(tls_sessions(&database).await >= 1);
    ledger.close().await;

    // Verified against the server's certificate as the CA file, by the name it was issued for.
    let verified = format!("{at_localhost}?sslmode=verify-full&sslrootcert={cert}");
    let ledger = relay_ledger::open_read_only(&verified)
        .await
        .expect("a verified connection");
    assert_eq!(
        ledger.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert!(tls_sessions(&database).await >= 1);
    ledger.close().await;

    // The certificate names localhost, not 127.0.0.1; and without the CA file nothing vouches
    // for it: both are refused, naming the server.
    for refused in [
        format!("{url}?sslmode=verify-full&sslrootcert={cert}"),
        format!("{at_localhost}?sslmode=verify-full"),
    ] {
        let error = relay_ledger::open_read_only(&refused)
            .await
            .expect_err("an unverifiable server");
        let text = error.to_string();
        assert!(text.contains(":5432"), "names the server: {text}");
    }
    relay_testkit::postgres::drop_database(&url).await;
}
