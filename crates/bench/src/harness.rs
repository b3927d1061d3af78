//! What a benchmark run needs around the system under test: a run id, scratch directories and
//! databases, free ports, the release binaries built next to the benchmark, child processes.

use anyhow::Context;
use std::path::PathBuf;
use std::process::{Child, Command};

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary next to the running one (both are built into the same `target/<profile>`).
pub fn sibling_bin(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("binary directory")?.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} missing: `cargo build --release -p {package}`",
        bin.display()
    );
    Ok(bin)
}

/// A short random id for database, topic and key names.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// A fresh scratch directory under the system's temporary directory.
pub fn scratch_dir(prefix: &str, id: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{id}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Drops a benchmark database (connections are closed by force).
pub async fn drop_database(pg: &str, database: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{pg}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// Child processes, sent SIGTERM and waited for when dropped.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}
