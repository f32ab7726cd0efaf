//! A TCP proxy that drops connections part way through a request, as a phone losing its
//! network does: for resumable uploads, whose client must carry on from what the server kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy on `127.0.0.1:0` in front of a server. Each of its first `cuts` connections is
/// closed (both ways) once it has carried `after` bytes towards the server; later connections
/// pass untouched.
pub struct CuttingProxy {
    pub base: String,
    left: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// A proxy to the server at `base` (`http://host:port`).
    pub async fn start(base: &str, after: usize, cuts: usize) -> CuttingProxy {
        let target = base.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let left = Arc::new(AtomicUsize::new(cuts));
        let budget = left.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                tokio::spawn(relay(client, target.clone(), cut.then_some(after)));
            }
        });
        CuttingProxy {
            base: format!("http://{addr}"),
            left,
            task,
        }
    }

    /// How many of the planned cuts have not happened yet.
    pub fn cuts_left(&self) -> usize {
        self.left.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection; with `cut_after`, ends it once that many request bytes went through.
async fn relay(client: TcpStream, target: String, cut_after: Option<usize>) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut sent = 0;
    let mut buf = vec![0; 16 * 1024];
    loop {
        let room = cut_after.map_or(buf.len(), |limit| buf.len().min(limit - sent));
        if room == 0 {
            break;
        }
        let n = match client_read.read(&mut buf[..room]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    if cut_after.is_some() {
        // Both ways at once: the client gets no answer to the request it was sending.
        answers.abort();
    } else {
        let _ = server_write.shutdown().await;
        let _ = answers.await;
    }
}
