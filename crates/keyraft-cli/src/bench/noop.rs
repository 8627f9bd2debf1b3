//! The bare RPC bound: a tonic unary call that does no work.
//!
//! `--workload noop-rpc` measures what a gRPC round trip over loopback costs on this
//! machine with the same client library (tonic 0.14 over HTTP/2, `tcp_nodelay`), the
//! same number of connections and the same number of callers as a Keyraft workload, so
//! that a Keyraft number can be read as a ratio to it.
//!
//! The server is hand-written rather than generated: one `tower` service that answers
//! the path [`METHOD`] through `tonic::server::Grpc::unary` with an empty protobuf
//! message decoded and encoded by `tonic_prost::ProstCodec` — the same code path a
//! generated unary method takes, minus everything Keyraft adds (authentication,
//! routing, Raft, the HSM, auditing). Nothing is proto-compiled for it, and the server
//! crate is not touched.
//!
//! It runs in this process but on its own Tokio runtime (its own worker threads, as
//! many as a Keyraft node has by default: one per core), so the callers' scheduler
//! and the server's are separate, as they are when the callers talk to `keyraft
//! server` processes. The callers and the server still share the machine's cores, as
//! they do in every other workload on a single machine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use keyraft_server::node::no_delay;
use tokio::sync::oneshot;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The gRPC path of the no-op method.
pub(crate) const METHOD: &str = "/keyraft.bench.Noop/Call";

/// The empty message sent both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Empty {}

/// A running no-op server; dropping it stops the server.
pub(crate) struct NoopServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl NoopServer {
    /// Starts the server on 127.0.0.1 and a free port, on a runtime of `workers`
    /// threads of its own.
    pub(crate) fn start(workers: usize) -> Result<NoopServer, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("no-op server: cannot listen: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("no-op server: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("no-op server: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("noop-server")
            .enable_all()
            .build()
            .map_err(|e| format!("no-op server: cannot start a runtime: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("noop-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("no-op server: {e}");
                            return;
                        }
                    };
                    let served = tonic::transport::Server::builder()
                        .add_service(NoopService)
                        .serve_with_incoming_shutdown(no_delay(listener), async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        eprintln!("no-op server: {e}");
                    }
                });
            })
            .map_err(|e| format!("no-op server: cannot start a thread: {e}"))?;
        Ok(NoopServer {
            addr,
            stop: Some(stop),
        })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The service: [`METHOD`] answers an empty message; every other path is
/// `UNIMPLEMENTED`.
#[derive(Clone)]
struct NoopService;

impl tonic::server::NamedService for NoopService {
    const NAME: &'static str = "keyraft.bench.Noop";
}

impl<B> Service<http::Request<B>> for NoopService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != METHOD {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Empty, Empty>::default());
            Ok(grpc.unary(Answer, req).await)
        })
    }
}

/// The method's body: nothing.
struct Answer;

impl tonic::server::UnaryService<Empty> for Answer {
    type Response = Empty;
    type Future = std::future::Ready<Result<Response<Empty>, Status>>;

    fn call(&mut self, _request: Request<Empty>) -> Self::Future {
        std::future::ready(Ok(Response::new(Empty {})))
    }
}

/// One connection to the no-op server.
#[derive(Clone)]
pub(crate) struct NoopClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl NoopClient {
    /// Connects (one HTTP/2 connection per client, like a Keyraft `Client` per node).
    pub(crate) async fn connect(addr: SocketAddr) -> Result<NoopClient, String> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("no-op server at {addr}: {e}"))?;
        Ok(NoopClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One call.
    pub(crate) async fn call(&self) -> Result<(), Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(
            Request::new(Empty {}),
            PathAndQuery::from_static(METHOD),
            ProstCodec::<Empty, Empty>::default(),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_noop_method_answers_and_other_paths_are_unimplemented() {
        let server = NoopServer::start(1).unwrap();
        let client = NoopClient::connect(server.addr()).await.unwrap();
        for _ in 0..3 {
            client.call().await.unwrap();
        }
        let mut grpc = client.grpc.clone();
        grpc.ready().await.unwrap();
        let other = grpc
            .unary(
                Request::new(Empty {}),
                PathAndQuery::from_static("/keyraft.bench.Noop/Other"),
                ProstCodec::<Empty, Empty>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::Unimplemented);
    }
}
