//! The instrumented database methods, shared by [`Client`](super::Client)
//! and [`Transaction`](super::Transaction).
//!
//! Each one has the signature and bounds of the tokio-postgres /
//! deadpool-postgres method it shadows (a tighter bound would break
//! callers), calls it through an explicit accessor (`self.pg()`: the
//! tokio-postgres object, `self.dp()`: the deadpool-postgres one) so it
//! cannot recurse, and times it with `self.timing()`.

/// Expands to the timed methods inside an `impl` whose type has
/// `fn pg(&self)`, `fn dp(&self)` and `fn timing(&self)`.
macro_rules! instrumented_methods {
    ($what:literal) => {
        /// Like `prepare` of
        #[doc = $what]
        /// timed; the text is recorded as the last statement.
        pub async fn prepare(&self, query: &str) -> Result<Statement, Error> {
            self.timing()
                .run(Some(query), self.pg().prepare(query))
                .await
        }

        /// Like `prepare_typed` of
        #[doc = $what]
        /// timed.
        pub async fn prepare_typed(
            &self,
            query: &str,
            parameter_types: &[Type],
        ) -> Result<Statement, Error> {
            let call = self.pg().prepare_typed(query, parameter_types);
            self.timing().run(Some(query), call).await
        }

        /// Like deadpool-postgres's `prepare_cached`, timed; the text is
        /// recorded as the last statement (and stays the last statement
        /// while the prepared statement is run).
        pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
            self.timing()
                .run(Some(query), self.dp().prepare_cached(query))
                .await
        }

        /// Like deadpool-postgres's `prepare_typed_cached`, timed.
        pub async fn prepare_typed_cached(
            &self,
            query: &str,
            types: &[Type],
        ) -> Result<Statement, Error> {
            let call = self.dp().prepare_typed_cached(query, types);
            self.timing().run(Some(query), call).await
        }

        /// Like `query` of
        #[doc = $what]
        /// timed.
        pub async fn query<T>(
            &self,
            statement: &T,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Vec<Row>, Error>
        where
            T: ?Sized + ToStatement,
        {
            self.timing()
                .run(None, self.pg().query(statement, params))
                .await
        }

        /// Like `query_one` of
        #[doc = $what]
        /// timed.
        pub async fn query_one<T>(
            &self,
            statement: &T,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Row, Error>
        where
            T: ?Sized + ToStatement,
        {
            self.timing()
                .run(None, self.pg().query_one(statement, params))
                .await
        }

        /// Like `query_opt` of
        #[doc = $what]
        /// timed.
        pub async fn query_opt<T>(
            &self,
            statement: &T,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Option<Row>, Error>
        where
            T: ?Sized + ToStatement,
        {
            self.timing()
                .run(None, self.pg().query_opt(statement, params))
                .await
        }

        /// Like `query_raw` of
        #[doc = $what]
        /// timed until the row stream is returned (reading the rows
        /// afterwards is not counted as busy time).
        pub async fn query_raw<T, P, I>(&self, statement: &T, params: I) -> Result<RowStream, Error>
        where
            T: ?Sized + ToStatement,
            P: BorrowToSql,
            I: IntoIterator<Item = P>,
            I::IntoIter: ExactSizeIterator,
        {
            self.timing()
                .run(None, self.pg().query_raw(statement, params))
                .await
        }

        /// Like `query_typed` of
        #[doc = $what]
        /// timed.
        pub async fn query_typed(
            &self,
            query: &str,
            params: &[(&(dyn ToSql + Sync), Type)],
        ) -> Result<Vec<Row>, Error> {
            self.timing()
                .run(Some(query), self.pg().query_typed(query, params))
                .await
        }

        /// Like `query_typed_one` of
        #[doc = $what]
        /// timed.
        pub async fn query_typed_one(
            &self,
            statement: &str,
            params: &[(&(dyn ToSql + Sync), Type)],
        ) -> Result<Row, Error> {
            let call = self.pg().query_typed_one(statement, params);
            self.timing().run(Some(statement), call).await
        }

        /// Like `query_typed_opt` of
        #[doc = $what]
        /// timed.
        pub async fn query_typed_opt(
            &self,
            statement: &str,
            params: &[(&(dyn ToSql + Sync), Type)],
        ) -> Result<Option<Row>, Error> {
            let call = self.pg().query_typed_opt(statement, params);
            self.timing().run(Some(statement), call).await
        }

        /// Like `query_typed_raw` of
        #[doc = $what]
        /// timed until the row stream is returned.
        pub async fn query_typed_raw<P, I>(
            &self,
            query: &str,
            params: I,
        ) -> Result<RowStream, Error>
        where
            P: BorrowToSql,
            I: IntoIterator<Item = (P, Type)>,
        {
            let call = self.pg().query_typed_raw(query, params);
            self.timing().run(Some(query), call).await
        }

        /// Like `execute` of
        #[doc = $what]
        /// timed.
        pub async fn execute<T>(
            &self,
            statement: &T,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<u64, Error>
        where
            T: ?Sized + ToStatement,
        {
            self.timing()
                .run(None, self.pg().execute(statement, params))
                .await
        }

        /// Like `execute_typed` of
        #[doc = $what]
        /// timed.
        pub async fn execute_typed(
            &self,
            statement: &str,
            params: &[(&(dyn ToSql + Sync), Type)],
        ) -> Result<u64, Error> {
            let call = self.pg().execute_typed(statement, params);
            self.timing().run(Some(statement), call).await
        }

        /// Like `execute_raw` of
        #[doc = $what]
        /// timed.
        pub async fn execute_raw<T, P, I>(&self, statement: &T, params: I) -> Result<u64, Error>
        where
            T: ?Sized + ToStatement,
            P: BorrowToSql,
            I: IntoIterator<Item = P>,
            I::IntoIter: ExactSizeIterator,
        {
            self.timing()
                .run(None, self.pg().execute_raw(statement, params))
                .await
        }

        /// Like `copy_in` of
        #[doc = $what]
        /// timed until the sink is returned.
        pub async fn copy_in<T, U>(&self, statement: &T) -> Result<CopyInSink<U>, Error>
        where
            T: ?Sized + ToStatement,
            U: Buf + 'static + Send,
        {
            self.timing().run(None, self.pg().copy_in(statement)).await
        }

        /// Like `copy_out` of
        #[doc = $what]
        /// timed until the stream is returned.
        pub async fn copy_out<T>(&self, statement: &T) -> Result<CopyOutStream, Error>
        where
            T: ?Sized + ToStatement,
        {
            self.timing().run(None, self.pg().copy_out(statement)).await
        }

        /// Like `simple_query` of
        #[doc = $what]
        /// timed; a raw `BEGIN`/`COMMIT` in the text is tracked.
        pub async fn simple_query(&self, query: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
            self.timing()
                .run(Some(query), self.pg().simple_query(query))
                .await
        }

        /// Like `batch_execute` of
        #[doc = $what]
        /// timed; a raw `BEGIN`/`COMMIT` in the text is tracked, so a
        /// connection returned inside a transaction is caught.
        pub async fn batch_execute(&self, query: &str) -> Result<(), Error> {
            self.timing()
                .run(Some(query), self.pg().batch_execute(query))
                .await
        }
    };
}
