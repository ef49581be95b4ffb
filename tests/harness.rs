//! Tests of the throwaway-PostgreSQL harness in `tests/support/pg.rs`.
#![cfg(feature = "postgres")]

mod support;

use support::pg;

#[tokio::test]
async fn throwaway_server_answers_queries() {
    let pool = pg::pool(2);
    let client = pool.get().await.unwrap_or_else(|e| {
        panic!("connecting to {} failed: {e}", pg::describe());
    });

    let one: i32 = client
        .query_one("SELECT 1::int4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    let version: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    let version: u32 = version
        .parse()
        .unwrap_or_else(|e| panic!("server_version_num {version:?} is not a number: {e}"));
    if std::env::var_os("DATABASE_URL").is_none_or(|v| v.is_empty()) {
        assert!(version >= 150000, "throwaway server is too old: {version}");
    } else {
        assert!(version >= 90000, "implausible server_version_num {version}");
    }

    // Both connections of the pool are usable at the same time.
    let second = pool.get().await.unwrap();
    let two: i32 = second
        .query_one("SELECT 2::int4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(two, 2);
}

#[test]
fn describe_never_shows_a_password() {
    let description = pg::describe();
    assert!(!description.is_empty());
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            assert!(description.starts_with("DATABASE_URL"), "{description}");
            let parsed: Result<tokio_postgres::Config, _> = url.parse();
            if let Some(password) = parsed.ok().as_ref().and_then(|c| c.get_password()) {
                let password = String::from_utf8_lossy(password);
                assert!(!description.contains(&*password), "{description}");
            }
        }
        _ => assert!(
            description.starts_with("throwaway PostgreSQL"),
            "{description}"
        ),
    }

    // The redaction itself, for parseable and unparseable values.
    for url in [
        "postgres://alice:s3cr3t-pw@db.example:5433/app",
        "host=db.example user=alice password=s3cr3t-pw dbname=app",
        "postgres://alice:s3cr3t-pw@db.example:notaport/app",
        "host=db.example password=s3cr3t-pw port=notaport",
        "postgres://alice@db.example/app?password=s3cr3t-pw&bogus_option=1",
    ] {
        let described = pg::describe_database_url(url);
        assert!(described.starts_with("DATABASE_URL"), "{described}");
        assert!(!described.contains("s3cr3t"), "{url} -> {described}");
    }
    let ok = pg::describe_database_url("postgres://alice:s3cr3t-pw@db.example:5433/app");
    assert!(
        ok.contains("db.example") && ok.contains("(password hidden)"),
        "{ok}"
    );
}
