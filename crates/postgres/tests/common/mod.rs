//! The URL of the fresh database `#[sqlx::test]` made, so tests connect the way the services
//! do (`connect` with a URL), never around it.

use sqlx::PgPool;

pub fn url_of(pool: &PgPool) -> String {
    let database = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test names its database")
        .to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (the Makefile sets it)");
    let (server, _) = base.rsplit_once('/').expect("a postgres:// URL with a database");
    format!("{server}/{database}")
}
