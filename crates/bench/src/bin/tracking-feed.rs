//! Demo traffic for `make run`: parcel-status events with the mess real streams have (statuses out
//! of order, duplicate deliveries, malformed records).

use backbone_bench::{event_json, producer, send_all, STATUSES};
use clap::Parser;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "tracking.events")]
    topic: String,
    #[arg(long, default_value_t = 20)]
    shipments: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = OffsetDateTime::now_utc();
    let tag = run.unix_timestamp();
    let mut records = Vec::new();
    for s in 0..args.shipments {
        let shipment = format!("demo-{tag}-{s}");
        // Every third shipment arrives newest-first; every fifth event is delivered twice.
        let order: Vec<usize> = if s % 3 == 0 {
            vec![3, 2, 1, 0]
        } else {
            vec![0, 1, 2, 3]
        };
        for i in order {
            let at = (run + Duration::seconds(i as i64)).format(&Rfc3339)?;
            let doc = event_json(&format!("evt-{tag}-{s}-{i}"), &shipment, STATUSES[i], &at);
            if (s + i) % 5 == 0 {
                records.push((shipment.clone(), doc.clone()));
            }
            records.push((shipment.clone(), doc));
        }
    }
    records.push(("demo-bad".into(), "{this is not json".into()));
    records.push((
        "demo-bad".into(),
        event_json(
            &format!("evt-{tag}-bad"),
            "demo-bad",
            "TELEPORTED",
            &run.format(&Rfc3339)?,
        ),
    ));
    let n = records.len();
    send_all(&producer(&args.brokers, 5)?, &args.topic, records, 1_000).await?;
    println!(
        "sent {n} events for {} shipments to {} (with duplicates, out-of-order statuses and 2 malformed)",
        args.shipments, args.topic
    );
    Ok(())
}
