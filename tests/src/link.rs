//! A TCP link between a client and a real service that a test can cut and restore: the service
//! stays the real one, only the network between them fails (connections reset, new ones refused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards `listen_addr()` to a target address while up.
pub struct Link {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Cancelled on every cut, so open connections are reset too.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Link {
    /// Starts forwarding a free local port to `target` (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let link = Link {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            generation: Arc::new(std::sync::Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        tokio::spawn(accept_loop(
            listener,
            target.to_owned(),
            link.up.clone(),
            link.generation.clone(),
            link.stop.clone(),
        ));
        Ok(link)
    }

    /// The address clients connect to instead of the service.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every open connection and refuses new ones until [`Link::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut current) = self.generation.lock() {
            current.cancel();
            *current = CancellationToken::new();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        if !up.load(Ordering::SeqCst) {
            drop(client); // refused: the client sees the connection close at once
            continue;
        }
        let Some(cut) = generation.lock().ok().map(|g| g.clone()) else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&target).await else { return };
            let mut client = client;
            tokio::select! {
                () = cut.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}
