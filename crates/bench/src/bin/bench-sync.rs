//! crm-sync benchmark: see `backbone_bench::sync`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backbone_bench::sync::main(backbone_bench::sync::Args::parse()).await
}
