//! Two-way sync benchmark: see `backbone_bench::two_way`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backbone_bench::two_way::main(backbone_bench::two_way::Args::parse()).await
}
