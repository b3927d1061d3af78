//! Transport security for end-to-end tests, all of it private to one test and gone when dropped:
//!
//! - [`Pki`]: a throw-away certificate authority that issues server and client certificates;
//! - [`Tansu`]: a broker of its own (a child process on a free port, SQLite storage in a
//!   temporary directory), optionally with SASL authentication required;
//! - [`TlsFront`]: a TLS listener that forwards the decrypted bytes to that broker. tansu 0.6.0
//!   cannot serve TLS itself (see `docs/transport-security.md`), so the broker advertises the
//!   front's address and every client connection goes through it, as it would through a TLS
//!   broker: the Kafka clients under test do real TLS with certificate and host-name checks;
//! - [`TlsPostgres`]: a PostgreSQL cluster of its own that accepts TLS connections only;
//! - [`probe`]: one metadata request with given client properties, and what librdkafka said.

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// A port nobody listens on now (the usual small race between this and its use is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_for_port(addr: SocketAddr, timeout: Duration, what: &str, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if start.elapsed() > timeout {
            bail!(
                "{what} did not listen on {addr} within {timeout:?}; its log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs a command to completion; a failure carries its output.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    pub fn cert_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.cert).with_context(|| format!("reading {}", self.cert.display()))
    }

    pub fn key_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.key).with_context(|| format!("reading {}", self.key.display()))
    }
}

/// A certificate authority made for one test, valid for a week around now; its files live in a
/// temporary directory removed on drop.
pub struct Pki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate (what clients trust: `ssl.ca.location`, `sslrootcert`).
    pub ca_pem: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("backbone-pki-").tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let ca = params.self_signed(&ca_key)?;
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem())?;
        Ok(Self {
            dir,
            ca,
            ca_key,
            ca_pem,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file: &str, names: &[&str]) -> anyhow::Result<Leaf> {
        self.issue(file, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose subject is `name`.
    pub fn client(&self, file: &str, name: &str) -> anyhow::Result<Leaf> {
        self.issue(file, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.is_ca = IsCa::ExplicitNoCa;
        validity(&mut params);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem())?;
        std::fs::write(&leaf.key, key.serialize_pem())?;
        set_mode(&leaf.key, 0o600)?;
        Ok(leaf)
    }
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(7);
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kafka clients

/// librdkafka properties for TLS to a broker whose certificate `ca_pem` signed, with the host
/// name checked against the certificate.
pub fn ssl_properties(ca_pem: &Path) -> BTreeMap<String, String> {
    [
        ("security.protocol", "SSL".to_owned()),
        ("ssl.ca.location", ca_pem.display().to_string()),
        ("ssl.endpoint.identification.algorithm", "https".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// SASL/SCRAM-SHA-512 over TLS: what Apache Kafka and Amazon MSK take.
pub fn scram_properties(ca_pem: &Path, user: &str, password: &str) -> BTreeMap<String, String> {
    let mut p = ssl_properties(ca_pem);
    p.insert("security.protocol".into(), "SASL_SSL".into());
    p.insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
    p.insert("sasl.username".into(), user.into());
    p.insert("sasl.password".into(), password.into());
    p
}

pub fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// An idempotent producer with `properties` (the test's own, next to the service's).
pub fn producer_with(brokers: &str, properties: &BTreeMap<String, String>) -> anyhow::Result<FutureProducer> {
    Ok(client_config(brokers, properties)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?)
}

/// Keeps what librdkafka reports (errors and warnings), so a refusal can be told apart from a
/// broker that is simply down.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn push(&self, line: String) {
        if let Ok(mut l) = self.0.lock() {
            l.push(line);
        }
    }
}

impl ClientContext for Recorder {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.push(format!("{fac}: {log_message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Recorder {}

/// What one metadata request with some client properties came to.
#[derive(Debug)]
pub struct Probe {
    /// The topics the broker listed, or the request's error.
    pub result: Result<Vec<String>, String>,
    /// librdkafka's errors and warnings on the way.
    pub reports: Vec<String>,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether any report contains one of `needles` (case-insensitive).
    pub fn said(&self, needles: &[&str]) -> bool {
        self.reports.iter().any(|r| {
            let r = r.to_lowercase();
            needles.iter().any(|n| r.contains(&n.to_lowercase()))
        })
    }
}

/// One metadata request (all topics) through a fresh client with `properties`.
pub async fn probe(brokers: String, properties: BTreeMap<String, String>, timeout: Duration) -> Probe {
    let mut config = client_config(&brokers, &properties);
    // One connection attempt after another until the timeout: fail at the first refusal.
    config
        .set("reconnect.backoff.ms", "100")
        .set("group.id", "tls-probe")
        .set_log_level(RDKafkaLogLevel::Warning);
    let recorder = Recorder::default();
    let created: Result<BaseConsumer<Recorder>, _> = config.create_with_context(recorder.clone());
    let result = match created {
        Err(e) => Err(format!("client not created: {e}")),
        Ok(consumer) => tokio::task::spawn_blocking(move || {
            let result = consumer
                .fetch_metadata(None, timeout)
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
                .map_err(|e| e.to_string());
            // Errors reach the context through the client's queue: serve it.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(500) {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(format!("probe task: {e}"))),
    };
    Probe {
        result,
        reports: recorder.lines(),
    }
}

// ---------------------------------------------------------------------------------------------
// The broker

/// tansu as `deploy/stack.sh up` installs it: `$TOOLS_DIR/tansu-0.6.0/bin/tansu`, TOOLS_DIR
/// defaulting to `${XDG_CACHE_HOME:-$HOME/.cache}/backbone`; `TANSU` names another binary.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let bin = match var("TANSU") {
        Some(b) => b,
        None => {
            let tools = var("TOOLS_DIR")
                .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("backbone")))
                .or_else(|| var("HOME").map(|h| h.join(".cache/backbone")))
                .context("none of TOOLS_DIR, XDG_CACHE_HOME and HOME is set: cannot find tansu")?;
            tools.join("tansu-0.6.0/bin/tansu")
        }
    };
    if !bin.is_file() {
        bail!(
            "tansu not found at {}: run `deploy/stack.sh up` (it installs tansu 0.6.0) or set TANSU",
            bin.display()
        );
    }
    Ok(bin)
}

/// A broker of this test's own: SQLite storage in a temporary directory, listening on
/// 127.0.0.1 on a free port and advertising `advertised` (the TLS front). Killed on drop.
pub struct Tansu {
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
    /// Where the broker itself listens (plaintext, loopback only).
    pub listen: SocketAddr,
    advertised: String,
}

impl Tansu {
    /// Starts the broker; `advertised` is the `host:port` clients are told to connect to.
    pub fn start(advertised: &str, authentication: bool) -> anyhow::Result<Self> {
        let mut broker = Self {
            bin: tansu_binary()?,
            dir: tempfile::Builder::new().prefix("backbone-tansu-").tempdir()?,
            child: None,
            listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            advertised: advertised.to_owned(),
        };
        broker.spawn(authentication)?;
        Ok(broker)
    }

    /// A plaintext broker that advertises its own address.
    pub fn start_plain() -> anyhow::Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut broker = Self {
            bin: tansu_binary()?,
            dir: tempfile::Builder::new().prefix("backbone-tansu-").tempdir()?,
            child: None,
            listen,
            advertised: listen.to_string(),
        };
        broker.spawn(false)?;
        Ok(broker)
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and nothing is answered.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the broker is not running")?;
        run(
            Command::new("kill").arg(signal).arg(child.id().to_string()),
            "kill",
        )
        .map(|_| ())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn spawn(&mut self, authentication: bool) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://{}", self.listen))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", self.advertised))
            // tansu resolves a sqlite URL's path against its working directory.
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .arg("--silent")
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if authentication {
            cmd.arg("--authentication");
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?,
        );
        wait_for_port(self.listen, Duration::from_secs(20), "tansu", &self.log())
    }

    /// Stops the broker and starts it again on the same storage, with or without
    /// authentication.
    pub fn restart(&mut self, authentication: bool) -> anyhow::Result<()> {
        self.stop();
        let start = Instant::now();
        while TcpStream::connect_timeout(&self.listen, Duration::from_millis(100)).is_ok() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("tansu still listens on {} after it was stopped", self.listen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(authentication)
    }

    /// Creates a SCRAM-SHA-512 user. Needs a broker without `--authentication`: tansu's own
    /// client does not authenticate, and an authenticating broker answers it by closing the
    /// connection (NotAuthenticated).
    pub fn create_scram_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        run(
            Command::new(&self.bin)
                .args(["user", "create", "--mechanism", "scram512", "--broker"])
                .arg(format!("tcp://{}", self.listen))
                .arg(name)
                .arg(password),
            "tansu user create",
        )
        .map(|_| ())
    }

    /// The broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so SQLite is left tidy, then SIGKILL.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The TLS front

/// A TLS listener on 127.0.0.1 (and [::1] on the same port where it can) that forwards each
/// connection, decrypted, to `backend`. With a client CA it requires a client certificate that
/// CA signed (mutual TLS). Stops on drop, with every connection it carries.
pub struct TlsFront {
    pub port: u16,
    task: JoinHandle<()>,
    refusals: Arc<Mutex<Vec<String>>>,
}

impl TlsFront {
    /// Binds the listeners now, so the address can be advertised before the front starts.
    pub async fn bind() -> anyhow::Result<Vec<tokio::net::TcpListener>> {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = v4.local_addr()?.port();
        let mut listeners = vec![v4];
        // `localhost` may resolve to ::1 first; answer there too rather than make clients wait
        // for their next address.
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            listeners.push(v6);
        }
        Ok(listeners)
    }

    pub fn start(
        listeners: Vec<tokio::net::TcpListener>,
        server: &Leaf,
        client_ca: Option<&Path>,
        backend: SocketAddr,
    ) -> anyhow::Result<Self> {
        let port = listeners.first().context("no listener")?.local_addr()?.port();
        let config = server_config(server, client_ca)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listeners, acceptor, backend, refusals.clone()));
        Ok(Self { port, task, refusals })
    }

    /// Why handshakes failed so far, as the front saw it, oldest first.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The distinct reasons among [`Self::refusals`] from index `from` on.
    pub fn reasons_since(&self, from: usize) -> Vec<String> {
        let mut reasons: Vec<String> = self.refusals().into_iter().skip(from).collect();
        reasons.sort();
        reasons.dedup();
        reasons
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(server: &Leaf, client_ca: Option<&Path>) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&server.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&server.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

async fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    refusals: Arc<Mutex<Vec<String>>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    // The accept loops and every connection live in this set: aborting the task drops them all.
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let tx = tx.clone();
        tasks.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if tx.send(tcp).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            accepted = rx.recv() => {
                let Some(tcp) = accepted else { break };
                let acceptor = acceptor.clone();
                let refusals = refusals.clone();
                tasks.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(mut tls)) => {
                            if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                                let _ = upstream.set_nodelay(true);
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                            }
                        }
                        Ok(Err(e)) => {
                            if let Ok(mut r) = refusals.lock() {
                                r.push(e.to_string());
                            }
                        }
                        Err(_) => {
                            if let Ok(mut r) = refusals.lock() {
                                r.push("TLS handshake timed out".into());
                            }
                        }
                    }
                });
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The directory with `initdb` and `pg_ctl`: `PG_BINDIR`, or the newest
/// `/usr/lib/postgresql/<version>/bin` that has them.
pub fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        if !(dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()) {
            bail!("PG_BINDIR={} has no initdb and pg_ctl", dir.display());
        }
        return Ok(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/<version>/bin: \
         install the server (`deploy/stack.sh up` does, or `apt-get install postgresql`) or set PG_BINDIR",
    )
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = run(Command::new("id").args(args), "id")?;
    out.trim()
        .parse()
        .with_context(|| format!("`id {}` printed {out:?}", args.join(" ")))
}

/// A PostgreSQL cluster of this test's own on 127.0.0.1 and a free port that accepts TLS
/// connections only (`hostssl`, SCRAM password; no `host` line), with the server certificate
/// given. Run as the `postgres` OS user when the test runs as root (initdb refuses root). Stopped
/// (`pg_ctl stop -m immediate`) and removed on drop.
pub struct TlsPostgres {
    dir: TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
    pub password: String,
}

impl TlsPostgres {
    pub fn start(server: &Leaf) -> anyhow::Result<Self> {
        let bin = pg_bindir()?;
        let as_postgres = id(&["-u"])? == 0;
        let dir = tempfile::Builder::new().prefix("backbone-pg-").tempdir()?;
        let owner = if as_postgres {
            let uid = id(&["-u", "postgres"]).context(
                "tests run as root and initdb refuses root, so the cluster runs as the `postgres` OS \
                 user, which does not exist here: install the PostgreSQL server package",
            )?;
            Some((uid, id(&["-g", "postgres"])?))
        } else {
            None
        };
        let chown = |path: &Path| -> anyhow::Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
            Ok(())
        };
        chown(dir.path())?;
        let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password)?;
        set_mode(&pwfile, 0o600)?;
        chown(&pwfile)?;

        let pg = Self {
            port: free_port()?,
            dir,
            bin,
            as_postgres,
            password,
        };
        let data = pg.data();
        let data_arg = data.display().to_string();
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        pg.run_pg(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &pwfile_arg,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        std::fs::remove_file(&pwfile)?;

        // The server's certificate and key; PostgreSQL refuses a key others can read.
        let crt = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&crt, server.cert_pem()?)?;
        std::fs::write(&key, server.key_pem()?)?;
        set_mode(&key, 0o600)?;
        chown(&crt)?;
        chown(&key)?;

        let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str(&format!(
            "\n# e2e: TLS only, loopback only\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sockets}'\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             ssl_min_protocol_version = 'TLSv1.2'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 50\n\
             shared_buffers = '32MB'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            port = pg.port,
            sockets = pg.dir.path().display(),
        ));
        std::fs::write(data.join("postgresql.conf"), conf)?;
        // No `host` line: a connection without TLS finds no entry and is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local   all all                trust\n\
             hostssl all all 127.0.0.1/32   scram-sha-256\n",
        )?;

        let log = pg.dir.path().join("postgres.log");
        // The log file is written by the server: let it create the file.
        let log_arg = log.display().to_string();
        if let Err(e) = pg.run_pg(
            "pg_ctl",
            &["-D", &data_arg, "-l", &log_arg, "-w", "-t", "30", "start"],
        ) {
            bail!("{e}\nPostgreSQL log:\n{}", tail(&log));
        }
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd, tool)
    }

    /// A URL for `database` as the `postgres` user with its password, host `localhost`, and
    /// `params` as the query string (e.g. `sslmode=verify-full&sslrootcert=...`).
    pub fn url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{}@localhost:{}/{database}?{params}",
            self.password, self.port
        )
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("postgres.log"))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self.run_pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// A broker of the test's own behind a TLS front with `server`'s certificate, and its
/// bootstrap address; `client_ca` makes the front require client certificates; `scram_user`
/// creates that user and requires SASL authentication.
pub async fn tls_broker(
    server: &Leaf,
    client_ca: Option<&Path>,
    scram_user: Option<(&str, &str)>,
) -> anyhow::Result<(Tansu, TlsFront, String)> {
    let listeners = TlsFront::bind().await?;
    let port = listeners[0].local_addr()?.port();
    let advertised = format!("localhost:{port}");
    let user = scram_user.map(|(u, p)| (u.to_owned(), p.to_owned()));
    let tansu = tokio::task::spawn_blocking(move || -> anyhow::Result<Tansu> {
        let mut tansu = Tansu::start(&advertised, false)?;
        if let Some((name, password)) = user {
            // tansu's own client cannot authenticate: create the user first, then require SASL.
            tansu.create_scram_user(&name, &password)?;
            tansu.restart(true)?;
        }
        Ok(tansu)
    })
    .await??;
    let front = TlsFront::start(listeners, server, client_ca, tansu.listen)?;
    Ok((tansu, front, format!("localhost:{port}")))
}
