//! The PostgreSQL roles of deploy/README.md "PostgreSQL": the schema's owner migrates (`ledger
//! migrate`, or `run` itself), a role that may only read and write rows runs on a ledger that is
//! current but cannot create one, and one that may only SELECT answers every read command.

use relay_ledger::{open, Ledger};
use sqlx::{Connection, Executor, PgConnection};

#[tokio::test]
async fn a_role_without_schema_rights_runs_on_a_current_ledger_and_cannot_migrate_one() {
    let url = relay_testkit::postgres::fresh_database().await;
    let role = format!("cr_app_{}", uuid::Uuid::new_v4().simple());
    let mut owner = PgConnection::connect(&url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        // Before PostgreSQL 15 every role may create in `public`; the guide revokes that too.
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
    ] {
        owner.execute(sql.as_str()).await.unwrap();
    }
    let (_, rest) = url.split_once("://").unwrap();
    let (_, host_and_db) = rest.split_once('@').unwrap();
    let app_url = format!("postgres://{role}@{host_and_db}");

    let refused = open(&app_url)
        .await
        .expect_err("an empty database needs its owner");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    open(&url).await.unwrap().close().await;
    owner
        .execute(
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let app = open(&app_url)
        .await
        .expect("a current ledger needs no schema rights");
    assert_eq!(
        app.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    app.set_poll_cursor("mailchimp:a", 5).await.unwrap();
    assert_eq!(app.poll_cursor("mailchimp:a").await.unwrap(), Some(5));
    assert!(app.unknown_contacts().await.unwrap().is_empty());
    let _ = app.subject_report("nobody").await.unwrap();
    app.close().await;
    // `ingest` writes rows and never migrates: the same role is enough for it.
    relay_ledger::open_current(&app_url)
        .await
        .expect("ingest's open needs no schema rights")
        .close()
        .await;

    // The DPO's and operators' role: SELECT only. Every read command opens read-only.
    let reader = format!("cr_reader_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {reader} LOGIN"),
        format!("GRANT USAGE ON SCHEMA public TO {reader}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}"),
    ] {
        owner.execute(sql.as_str()).await.unwrap();
    }
    let reader_url = format!("postgres://{reader}@{host_and_db}");
    let read = relay_ledger::open_read_only(&reader_url)
        .await
        .expect("a SELECT-only role reads");
    assert_eq!(read.poll_cursor("mailchimp:a").await.unwrap(), Some(5));
    let _ = read.subject_report("nobody").await.unwrap();
    assert!(read.unknown_contacts().await.unwrap().is_empty());
    let _ = read.consent_for_purpose("newsletter").await.unwrap();
    read.close().await;
    let _ = owner.close().await;
    relay_testkit::postgres::drop_database(&url).await;
    let mut admin = PgConnection::connect(&relay_testkit::postgres::admin_url())
        .await
        .unwrap();
    for r in [role, reader] {
        admin
            .execute(format!("DROP ROLE IF EXISTS {r}").as_str())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn ingest_s_open_never_creates_or_migrates_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let missing = relay_ledger::open_current(&url).await.unwrap_err();
    assert!(
        missing.to_string().contains("ledger.db does not exist")
            && missing.to_string().contains("ledger migrate"),
        "{missing}"
    );
    assert!(!dir.path().join("ledger.db").exists(), "nothing created");

    let fresh = relay_testkit::postgres::fresh_database().await;
    let empty = relay_ledger::open_current(&fresh).await.unwrap_err();
    assert!(
        empty.to_string().contains("holds no consent-relay ledger"),
        "{empty}"
    );
    open(&fresh).await.unwrap().close().await;
    relay_ledger::open_current(&fresh)
        .await
        .unwrap()
        .close()
        .await;
    relay_testkit::postgres::drop_database(&fresh).await;

    let closed = relay_ledger::open_current("postgres://relay@127.0.0.1:1/ledger")
        .await
        .unwrap_err();
    assert!(
        closed.to_string().contains("127.0.0.1:1/ledger") && closed.to_string().contains("refused"),
        "names the server: {closed}"
    );
}
