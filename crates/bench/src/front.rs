//! One address in front of several instances of a service, as a load balancer puts them: a TCP
//! proxy that hands each new connection to the next instance in turn, and to the one after it
//! when an instance refuses the connection (killed, or not started yet).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it stops accepting when dropped (connections already open run to their end).
pub struct Front {
    pub base_url: String,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let backends = Arc::new(Mutex::new(backends));
        let task = tokio::spawn(accept(listener, backends.clone()));
        Ok(Self {
            base_url,
            backends,
            task,
        })
    }

    /// The instances new connections go to from now on.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap_or_else(PoisonError::into_inner) = backends;
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, backends: Arc<Mutex<Vec<SocketAddr>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    while let Ok((client, _)) = listener.accept().await {
        let _ = client.set_nodelay(true);
        let order: Vec<SocketAddr> = {
            let all = backends.lock().unwrap_or_else(PoisonError::into_inner);
            let first = next.fetch_add(1, Ordering::Relaxed);
            (0..all.len()).map(|i| all[(first + i) % all.len()]).collect()
        };
        tokio::spawn(async move {
            let mut client = client;
            for addr in order {
                if let Ok(mut backend) = TcpStream::connect(addr).await {
                    let _ = backend.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    return;
                }
            }
            // No instance takes it: the client sees the connection close.
        });
    }
}
