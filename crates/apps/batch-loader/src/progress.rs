//! Progress: an indicatif bar with rate and ETA on a terminal, plain periodic lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when standard error is a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    Off,
}

/// Counters the reader and the sender update and the display reads.
#[derive(Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub jobs_sent: AtomicU64,
    pub jobs_skipped: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn line(&self) -> String {
        format!(
            "rows {} accepted {} rejected {} jobs sent {} skipped {} retries {}",
            Self::get(&self.rows),
            Self::get(&self.accepted),
            Self::get(&self.rejected),
            Self::get(&self.jobs_sent),
            Self::get(&self.jobs_skipped),
            Self::get(&self.retries),
        )
    }
}

pub struct Progress {
    pub counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    /// Starts the display for a file of `total_bytes`.
    pub fn start(mode: ProgressMode, total_bytes: u64, plain_every: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let (bar, ticker) = match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {percent:>3}% of the file, {binary_bytes_per_sec}, eta {eta}\n{msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style.progress_chars("=> "));
                let ticker = tokio::spawn(tick_bar(bar.clone(), counters.clone(), stop.clone()));
                (Some(bar), Some(ticker))
            }
            ProgressMode::Plain => {
                let ticker = tokio::spawn(tick_plain(
                    counters.clone(),
                    stop.clone(),
                    total_bytes,
                    plain_every,
                ));
                (None, Some(ticker))
            }
            _ => (None, None),
        };
        Self {
            counters,
            bar,
            stop,
            ticker: Mutex::new(ticker),
        }
    }

    /// A line for the operator that does not tear the bar.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Stops the display; the bar ends showing the final counts.
    pub async fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let ticker = self.ticker.lock().map(|mut t| t.take()).unwrap_or_default();
        if let Some(t) = ticker {
            let _ = t.await;
        }
        if let Some(bar) = &self.bar {
            // The summary follows on standard output; the bar leaves no half line behind.
            bar.finish_and_clear();
        }
    }
}

async fn tick_bar(bar: ProgressBar, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        bar.set_position(Counters::get(&counters.bytes));
        bar.set_message(counters.line());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tick_plain(counters: Arc<Counters>, stop: Arc<AtomicBool>, total: u64, every: Duration) {
    let started = Instant::now();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let bytes = Counters::get(&counters.bytes);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rows_per_sec = Counters::get(&counters.rows) as f64 / secs;
        let eta = if bytes > 0 {
            format!(
                "{:.0}s",
                secs * (total.saturating_sub(bytes)) as f64 / bytes as f64
            )
        } else {
            "?".into()
        };
        let percent = (bytes * 100).checked_div(total).unwrap_or(100);
        eprintln!(
            "progress {percent}% {} rows/s {rows_per_sec:.0} eta {eta}",
            counters.line()
        );
    }
}
