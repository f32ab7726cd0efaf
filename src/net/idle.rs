//! A TCP stream that fails once no byte has moved in either direction for the idle timeout,
//! and that holds its place under the connection caps for as long as the socket lives.
//!
//! Why at this level: hyper's header-read timeout only covers waiting for a request head, and a
//! response or WebSocket frame that the client never reads would otherwise wait on a full socket
//! buffer forever, holding its memory. Any progress in either direction counts, so a long response
//! that is being read, or a WebSocket kept busy by the server's pings, never times out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Place;

pub struct IdleStream {
    io: TcpStream,
    timeout: Duration,
    last_progress: Instant,
    // One timer per direction: reads and writes may be polled with different wakers (a split
    // WebSocket), and each must be woken when its own wait runs out.
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    _place: Place,
}

impl IdleStream {
    pub fn new(io: TcpStream, timeout: Duration, place: Place) -> IdleStream {
        let now = Instant::now();
        IdleStream {
            io,
            timeout,
            last_progress: now,
            read_timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            write_timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            _place: place,
        }
    }
}

/// After a `Pending`: an error once the connection has been idle for the whole timeout, else
/// `Pending` with `timer` armed for the current deadline.
fn check_idle(
    timer: &mut Pin<Box<Sleep>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<io::Error> {
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection idle for too long",
        )),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for IdleStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = this.last_progress + this.timeout;
                check_idle(&mut this.read_timer, deadline, cx).map(Err)
            }
        }
    }
}

impl IdleStream {
    /// Counts a write that moved bytes as progress; a pending one waits at most until idle.
    fn after_write(
        &mut self,
        polled: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|n| *n > 0) {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = self.last_progress + self.timeout;
                check_idle(&mut self.write_timer, deadline, cx).map(Err)
            }
        }
    }
}

impl AsyncWrite for IdleStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
