//! The socket under a tarpc connection, guarded by the connection's limits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::task::{Context, Poll};

use cachet_storage::ReplyBudget;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::listen::{Limits, UNAUTHENTICATED_MAX_FRAME};

/// Guards a connection's socket, following the 4-byte big-endian length
/// prefixes of the stream to know where frames start and end:
///
/// - a frame must arrive whole within `read_timeout` of its first byte (a
///   client that sends half a frame and stalls is closed; idle connections
///   between frames are left alone);
/// - before the connection authenticates, a frame may be at most
///   `UNAUTHENTICATED_MAX_FRAME` bytes;
/// - a frame's length (beyond the first `UNAUTHENTICATED_MAX_FRAME` bytes)
///   is taken from the budget of request bytes all connections share before
///   its body is buffered, and given back when it has arrived; a frame that
///   does not fit closes its connection;
/// - bytes written to the socket are credited to the connection's reply
///   budget, which the engine debits as it builds replies.
pub(super) struct Guard<IO> {
    io: IO,
    header: [u8; 4],
    header_got: usize,
    body_left: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: std::time::Duration,
    authed: Arc<AtomicBool>,
    max_frame: usize,
    request_bytes: Arc<AtomicI64>,
    /// Taken from `request_bytes` for the frame being received.
    reserved: i64,
    budget: Arc<ReplyBudget>,
}

impl<IO> Guard<IO> {
    pub(super) fn new(io: IO, limits: &Limits, authed: Arc<AtomicBool>, budget: Arc<ReplyBudget>) -> Self {
        Guard {
            io,
            header: [0; 4],
            header_got: 0,
            body_left: 0,
            deadline: None,
            limit: limits.read_timeout,
            authed,
            max_frame: limits.max_frame,
            request_bytes: limits.request_bytes.clone(),
            reserved: 0,
            budget,
        }
    }

    fn track(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(bytes.len());
                self.body_left -= n as u64;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    self.release();
                }
            } else {
                self.header[self.header_got] = bytes[0];
                self.header_got += 1;
                bytes = &bytes[1..];
                if self.header_got == 4 {
                    self.header_got = 0;
                    let len = u32::from_be_bytes(self.header) as usize;
                    self.admit(len)?;
                    self.body_left = len as u64;
                }
            }
        }
        Ok(())
    }

    /// Checks a frame's length against the limits and reserves its bytes.
    fn admit(&mut self, len: usize) -> std::io::Result<()> {
        let refuse = |msg: String| {
            tracing::warn!("closing a connection: {msg}");
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg))
        };
        if !self.authed.load(Ordering::Acquire) && len > UNAUTHENTICATED_MAX_FRAME {
            return refuse(format!(
                "a frame of {len} bytes before authenticating (at most {UNAUTHENTICATED_MAX_FRAME}); \
                 clients must send hello with the auth token first"
            ));
        }
        if len > self.max_frame {
            return refuse(format!(
                "a frame of {len} bytes is over the limit of {} (--max-value-bytes)",
                self.max_frame
            ));
        }
        // Small frames (most requests) are not counted, so clients keep
        // being served while large uploads hold the budget: the worst case
        // is the budget plus one small frame per connection.
        // A refused frame takes nothing, not even for a moment (taking and
        // giving back made a frame that fits look refused to a connection
        // checking in between).
        let n = len.saturating_sub(UNAUTHENTICATED_MAX_FRAME) as i64;
        let take = |left: i64| (left >= n).then_some(left - n);
        if n > 0 && self.request_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, take).is_err() {
            return refuse(format!(
                "a frame of {len} bytes would take request buffers across connections over \
                 --max-buffered-request-bytes; the client may retry"
            ));
        }
        self.reserved = n;
        Ok(())
    }

    fn release(&mut self) {
        let n = std::mem::take(&mut self.reserved);
        self.request_bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn mid_frame(&self) -> bool {
        self.header_got > 0 || self.body_left > 0
    }
}

impl<IO> Drop for Guard<IO> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guard<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(d) = &mut self.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            let msg = format!("a request frame did not arrive whole within {:?}; closing the connection", self.limit);
            tracing::debug!("{msg}");
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.track(&buf.filled()[before..])?;
            if !self.mid_frame() {
                self.deadline = None;
            } else if self.deadline.is_none() {
                let mut d = Box::pin(tokio::time::sleep(self.limit));
                let _ = d.as_mut().poll(cx);
                self.deadline = Some(d);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guard<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.credit(*n);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.credit(*n);
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
