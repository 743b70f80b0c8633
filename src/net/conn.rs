//! Connection guards shared by both servers: a cap on open connections, and a deadline for a new
//! connection's first bytes (a gRPC client sends the HTTP/2 preface at once; one that sends
//! nothing only holds a descriptor).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
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

impl tonic::transport::server::Connected for Guarded<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
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
}
