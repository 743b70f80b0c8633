//! Connection guards shared by both servers: a cap on open connections, a deadline for a new
//! connection's first bytes (a gRPC client sends the HTTP/2 preface at once; one that sends
//! nothing only holds a descriptor), and a lingering close.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};

/// At most `max` connections open at once; the next one is accepted when one closes.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max.max(1))) }
    }

    /// Waits for a free slot; the slot is held until the permit is dropped.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots.clone().acquire_owned().await.expect("the semaphore is never closed")
    }
}

/// A connection that must deliver its first `min_bytes` within a deadline (the 24-byte HTTP/2
/// preface a gRPC client sends at once: one byte and silence must not hold a slot), and holds a
/// slot of its server's connection cap while open.
pub struct Guarded<IO> {
    io: IO,
    first_bytes_by: Option<Pin<Box<Sleep>>>,
    /// Bytes still due before the deadline is lifted.
    owed: usize,
    _slot: OwnedSemaphorePermit,
}

/// The HTTP/2 connection preface: what a gRPC client sends first.
pub const HTTP2_PREFACE_LEN: usize = 24;

impl<IO> Guarded<IO> {
    /// With `min_bytes` 0 the connection only holds its slot.
    pub fn new(io: IO, within: Duration, min_bytes: usize, slot: OwnedSemaphorePermit) -> Self {
        let first_bytes_by = (min_bytes > 0).then(|| Box::pin(tokio::time::sleep(within)));
        Self { io, first_bytes_by, owed: min_bytes, _slot: slot }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.owed = this.owed.saturating_sub(buf.filled().len() - before);
                if this.owed == 0 {
                    this.first_bytes_by = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired =
                    this.first_bytes_by.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within the handshake timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// How long a closed connection keeps reading what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// A TCP connection that closes as a server's should (nginx's "lingering close"): when paygate is
/// done with it, it sends FIN and reads and discards whatever the client still sends, until the
/// client closes too or `LINGER` passes. Closed with unread bytes, the kernel would answer with a
/// reset instead, and a reset can destroy what was sent just before it (HTTP/2's final GOAWAY, a
/// last response) in the client's or a proxy's buffers: a request racing a draining replica's close
/// then fails in a way the client cannot tell from a lost answer, instead of being refused cleanly.
pub struct LingeringClose {
    /// `None` only once dropped.
    stream: Option<TcpStream>,
    lingering: Lingering,
}

/// The lingering closes of one server process, so that it exits only once they are done (a close
/// cut short by the process's exit is a reset again). As mini-redis's `shutdown_complete`: every
/// close holds a sender, and `finished` returns when the last one is dropped.
pub struct Lingerers {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

/// One connection's share of `Lingerers`: never sent on; dropping it is the signal.
#[derive(Clone)]
pub struct Lingering {
    _held: mpsc::Sender<()>,
}

impl Default for Lingerers {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self { tx, rx }
    }
}

impl Lingerers {
    pub fn handle(&self) -> Lingering {
        Lingering { _held: self.tx.clone() }
    }

    /// Returns once every connection handed a `Lingering` has closed (or `within` passed).
    pub async fn finished(self, within: Duration) {
        let Self { tx, mut rx } = self;
        drop(tx);
        let _ = tokio::time::timeout(within, rx.recv()).await;
    }
}

impl LingeringClose {
    pub fn new(stream: TcpStream, lingering: Lingering) -> Self {
        Self { stream: Some(stream), lingering }
    }

    fn io(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("open until dropped"))
    }
}

impl Drop for LingeringClose {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(runtime)) = (self.stream.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let lingering = self.lingering.clone();
        runtime.spawn(async move {
            let _lingering = lingering;
            let _ = stream.shutdown().await;
            let mut discard = [0u8; 4096];
            let _ =
                tokio::time::timeout(LINGER, async { while let Ok(1..) = stream.read(&mut discard).await {} }).await;
        });
    }
}

impl AsyncRead for LingeringClose {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringClose {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

impl tonic::transport::server::Connected for LingeringClose {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        let cap = ConnectionCap::new(2);
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_millis(50), 4, cap.slot().await);
        let mut buf = [0u8; 8];
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop((client, guarded));

        // A byte is not enough: the deadline holds until the bytes owed have come.
        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_millis(50), 4, cap.slot().await);
        client.write_all(b"P").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
        assert_eq!(guarded.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop((client, guarded));

        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_millis(50), 4, cap.slot().await);
        client.write_all(b"PRI *").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 5);
        // Past the deadline, a quiet but started connection is left alone.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let pending = tokio::time::timeout(Duration::from_millis(50), guarded.read(&mut buf)).await;
        assert!(pending.is_err(), "no timeout after the first bytes");
    }

    #[tokio::test]
    async fn the_cap_holds_a_slot_per_open_connection() {
        let cap = ConnectionCap::new(1);
        let first = cap.slot().await;
        assert!(tokio::time::timeout(Duration::from_millis(20), cap.slot()).await.is_err());
        drop(first);
        assert!(tokio::time::timeout(Duration::from_millis(20), cap.slot()).await.is_ok());
    }

    /// The server writes its last bytes and closes while the client's next request is unread:
    /// what does the client read?
    async fn close_with_a_request_unread(lingering: bool) -> (Vec<u8>, io::ErrorKind) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"a request the server never reads").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut server: Box<dyn AsyncWrite + Unpin + Send> = if lingering {
            Box::new(LingeringClose::new(server, Lingerers::default().handle()))
        } else {
            Box::new(server)
        };
        server.write_all(b"GOAWAY").await.unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut received, mut buf) = (Vec::new(), [0u8; 64]);
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return (received, io::ErrorKind::UnexpectedEof),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => return (received, e.kind()),
            }
        }
    }

    #[tokio::test]
    async fn a_server_closing_with_a_request_unread_ends_cleanly_not_with_a_reset() {
        // What a plain close does: the kernel resets the connection.
        let (_, plain) = close_with_a_request_unread(false).await;
        assert_eq!(plain, io::ErrorKind::ConnectionReset);
        let (received, lingering) = close_with_a_request_unread(true).await;
        assert_eq!((received.as_slice(), lingering), (&b"GOAWAY"[..], io::ErrorKind::UnexpectedEof));
    }

    /// The process waits for its closes to finish: until the client has closed too.
    #[tokio::test]
    async fn a_server_finishes_once_its_lingering_closes_have() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let lingerers = Lingerers::default();
        drop(LingeringClose::new(server, lingerers.handle()));
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = client.write_all(b"late").await;
            drop(client);
        });
        lingerers.finished(LINGER).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < LINGER, "{waited:?}");
    }
}
