//! gift-certificates benchmark: see `backbone_bench::certificates`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backbone_bench::certificates::main(backbone_bench::certificates::Args::parse()).await
}
