//! For tests only: an HTTP server on a thread of its own (a fake GitHub, a
//! notification receiver, the host itself), stopped when dropped.
//!
//! The listener is bound before anything else and that very socket is
//! served: binding port 0, closing it and reusing the number would let
//! another test take the port in between.

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

/// A server running on its own thread; dropping it stops the server.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `app` on 127.0.0.1, on a thread named `name`.
    pub fn start(name: &str, app: axum::Router) -> Self {
        Listener::bind().serve(name, app)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A server that panicked has already failed its test loudly.
            let _ = thread.join();
        }
    }
}

/// A listening socket on 127.0.0.1, for a server that must know its own
/// address before it starts (a config naming its URL).
pub struct Listener {
    socket: std::net::TcpListener,
    workers: Option<usize>,
}

impl Listener {
    /// Binds a port of the kernel's choosing on 127.0.0.1.
    pub fn bind() -> Self {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self {
            socket,
            workers: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket's address")
    }

    /// `http://127.0.0.1:PORT`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Runs the server on a multi-thread runtime of `workers` threads
    /// instead of a current-thread one: for handlers that block in place,
    /// or a server that spawns blocking work and must go on meanwhile.
    pub fn multi_thread(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Serves `app` on a thread named `name`.
    pub fn serve(self, name: &str, app: axum::Router) -> HttpServer {
        self.run(name, move |listener| async move {
            axum::serve(listener, app)
                .await
                .expect("serve the test app");
        })
    }

    /// Runs `server` on this socket, on a thread named `name`, until the
    /// returned [`HttpServer`] is dropped.
    pub fn run<F, Fut>(self, name: &str, server: F) -> HttpServer
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let addr = self.addr();
        self.socket
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (socket, workers) = (self.socket, self.workers);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut runtime = match workers {
                    Some(n) => {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(n);
                        b
                    }
                    None => tokio::runtime::Builder::new_current_thread(),
                };
                let runtime = runtime.enable_all().build().expect("a tokio runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(socket).expect("a tokio listener");
                    tokio::select! {
                        () = server(listener) => {}
                        _ = stopped => {}
                    }
                });
                // Requests still being answered are dropped, not awaited.
                runtime.shutdown_background();
            })
            .expect("spawn the server's thread");
        HttpServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    }

    #[test]
    fn serves_on_the_socket_it_bound_and_stops_on_drop() {
        let app = axum::Router::new().fallback(|| async { "hello" });
        let listener = Listener::bind();
        let addr = listener.addr();
        let server = listener.serve("test-http", app);
        assert_eq!(server.addr(), addr);
        assert_eq!(server.url(), format!("http://{addr}"));
        let reply = get(addr).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");

        drop(server);
        assert!(get(addr).is_err(), "still answering after drop");
    }
}
