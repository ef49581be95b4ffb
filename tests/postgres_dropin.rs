//! A module written against plain deadpool-postgres, compiled with only its
//! `use` line changed to poolwatch's names. Nothing else in `service` was
//! edited: the call sites, the `&client` passed to functions taking
//! `&deadpool_postgres::Client` / `&tokio_postgres::Client`, the
//! transaction, `prepare_cached`, `?` on pool errors.
#![cfg(feature = "postgres")]
mod support;

mod service {
    // was: use deadpool_postgres::{Client, Pool};
    use poolwatch::postgres::{Client, Pool};

    // A GenericClient import in scope does not change which method runs.
    #[allow(unused_imports)]
    use deadpool_postgres::GenericClient;
    use tokio_postgres::types::Type;

    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    pub async fn setup(pool: &Pool) -> Result<(), Error> {
        let client = pool.get().await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS dropin_accounts (id int PRIMARY KEY, balance int NOT NULL);
                 TRUNCATE dropin_accounts;
                 INSERT INTO dropin_accounts VALUES (1, 100), (2, 0);",
            )
            .await?;
        Ok(())
    }

    async fn balance(client: &Client, id: i32) -> Result<i32, Error> {
        let stmt = client
            .prepare_cached("SELECT balance FROM dropin_accounts WHERE id = $1")
            .await?;
        let row = client.query_one(&stmt, &[&id]).await?;
        Ok(row.get(0))
    }

    async fn count_with_deadpool_client(client: &deadpool_postgres::Client) -> Result<i64, Error> {
        let row = client
            .query_one("SELECT count(*) FROM dropin_accounts", &[])
            .await?;
        Ok(row.get(0))
    }

    async fn count_with_tokio_client(client: &tokio_postgres::Client) -> Result<i64, Error> {
        let row = client
            .query_one("SELECT count(*) FROM dropin_accounts", &[])
            .await?;
        Ok(row.get(0))
    }

    pub async fn transfer(
        pool: &Pool,
        from: i32,
        to: i32,
        amount: i32,
    ) -> Result<(i32, i32), Error> {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE dropin_accounts SET balance = balance - $2 WHERE id = $1",
            &[&from, &amount],
        )
        .await?;
        tx.execute_typed(
            "UPDATE dropin_accounts SET balance = balance + $2 WHERE id = $1",
            &[(&to, Type::INT4), (&amount, Type::INT4)],
        )
        .await?;
        let row = tx
            .query_one("SELECT count(*) FROM dropin_accounts", &[])
            .await?;
        assert_eq!(row.get::<_, i64>(0), 2);
        tx.commit().await?;
        assert_eq!(count_with_deadpool_client(&client).await?, 2);
        assert_eq!(count_with_tokio_client(&client).await?, 2);
        Ok((balance(&client, from).await?, balance(&client, to).await?))
    }
}

/// Generic code over the sealed `GenericClient` traits is the one call-site
/// edit: pass `&*client` / `&*tx`. Those calls run, untimed.
async fn count_generic<C: deadpool_postgres::GenericClient>(client: &C) -> i64 {
    let row = client
        .query_one("SELECT count(*) FROM dropin_accounts", &[])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn a_deadpool_postgres_module_compiles_with_only_the_import_changed() {
    let pool = poolwatch::postgres::Pool::new(
        support::pg::pool(2),
        poolwatch::WatchConfig::builder()
            .pool_name("dropin")
            .build()
            .unwrap(),
    );
    service::setup(&pool).await.unwrap();
    assert_eq!(service::transfer(&pool, 1, 2, 30).await.unwrap(), (70, 30));
    let committed: u64 = pool
        .snapshot()
        .sites
        .iter()
        .map(|s| s.database.committed)
        .sum();
    assert_eq!(committed, 1);

    let mut client = pool.get().await.unwrap();
    assert_eq!(count_generic(&*client).await, 2);
    let tx = client.transaction().await.unwrap();
    assert_eq!(count_generic(&*tx).await, 2);
    tx.rollback().await.unwrap();
}
