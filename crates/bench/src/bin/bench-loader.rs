//! batch-loader benchmark: see `backbone_bench::loader`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backbone_bench::loader::main(backbone_bench::loader::Args::parse()).await
}
