//! A TCP proxy the test controls, to cut the database connection without touching the shared
//! server: `freeze` holds bytes in flight, `cut` closes every connection and refuses new ones,
//! `restore` lets traffic through again. `trap_commit_after` watches PostgreSQL's wire protocol
//! for the COMMIT of a transaction that ran a given statement: it lets that COMMIT through, holds
//! the server's answer (so the client never learns it committed) and tells the test, which can
//! then kill the client at exactly that moment. `retarget` moves the proxy to another server, as
//! a failover manager moves a virtual IP or a pooler's backend: new connections go there, and the
//! ones still open to the old server are closed.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::{oneshot, watch},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Freeze,
    Cut,
}

/// An armed trap: the statement text to see first, and whom to tell.
type Trap = Arc<Mutex<Option<(Vec<u8>, oneshot::Sender<()>)>>>;

pub struct TcpProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    target: watch::Sender<SocketAddr>,
    trap: Trap,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    /// Listens on `listen` (e.g. the address of an earlier proxy, to come back on the same port).
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        let (target, targets) = watch::channel(target);
        let trap: Trap = Arc::new(Mutex::new(None));
        let traps = trap.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Cut {
                    continue; // dropped: the connection closes at once
                }
                let rx = rx.clone();
                let trap = traps.clone();
                let mut moved = targets.clone();
                let target = *moved.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Set once this connection's trapped COMMIT went through: its answer is held.
                    let (hold_tx, hold_rx) = watch::channel(false);
                    let pumps = async {
                        tokio::join!(
                            pump(cr, sw, rx.clone(), Some((trap, hold_tx)), None),
                            pump(sr, cw, rx, None, Some(hold_rx))
                        )
                    };
                    // Moved elsewhere: this connection to the old server closes (both halves dropped).
                    tokio::select! {
                        _ = pumps => {}
                        _ = moved.changed() => {}
                    }
                });
            }
        });
        Self { addr, mode, target, trap, task }
    }

    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Freeze);
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Sends new connections to `target` from now on and closes those open to the old one.
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Arms a one-shot trap: the first COMMIT on a connection that sent `statement` (e.g.
    /// `INSERT INTO cancellations`) goes to the server, its answer is held, and the receiver fires.
    pub fn trap_commit_after(&self, statement: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.trap.lock().unwrap() = Some((statement.as_bytes().to_vec(), tx));
        rx
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    watch_commits: Option<(Trap, watch::Sender<bool>)>,
    mut held: Option<watch::Receiver<bool>>,
) {
    let mut cut = mode.clone();
    let mut buf = vec![0u8; 16 * 1024];
    // The last bytes seen, so a statement split across two reads is still recognised.
    let mut recent: Vec<u8> = Vec::new();
    let mut saw_statement = false;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|m| *m == Mode::Cut) => return,
        };
        // Hold the bytes while frozen; drop everything if cut meanwhile.
        match mode.wait_for(|m| *m != Mode::Freeze).await.map(|m| *m) {
            Ok(Mode::Pass) => {}
            _ => return,
        }
        // The server's answers after a trapped COMMIT never reach the client.
        if let Some(held) = &mut held
            && *held.borrow()
        {
            let _ = cut.wait_for(|m| *m == Mode::Cut).await;
            return;
        }
        let mut fire = None;
        if let Some((trap, hold)) = &watch_commits {
            let mut guard = trap.lock().unwrap();
            if let Some((statement, _)) = guard.as_ref() {
                let keep = recent.len().saturating_sub(statement.len());
                recent.drain(..keep);
                let offset = recent.len();
                recent.extend_from_slice(&buf[..n]);
                let statement_at = find(&recent, statement);
                saw_statement |= statement_at.is_some();
                let commit_at = find(&recent[offset.saturating_sub(7)..], b"COMMIT\0");
                if saw_statement && commit_at.is_some() {
                    hold.send_replace(true);
                    fire = guard.take().map(|(_, tx)| tx);
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(tx) = fire {
            let _ = tx.send(());
        }
    }
}
