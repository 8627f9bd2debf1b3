//! The etcd baseline: just enough of etcd's v3 gRPC API to put keys and find the
//! leader, and a local 3-member etcd cluster for the failover measurement.
//!
//! Debian's `etcd-server` package ships `etcd` and `etcdctl` but not etcd's own
//! `benchmark` tool, and `etcdctl` costs a process per put. So the baseline is driven by
//! this bench, with the same callers, histograms and report as every Keyraft workload.
//! Rather than pull in an etcd client crate (with its own tonic and prost versions and
//! a build script), the two messages we need are written out by hand with
//! `prost::Message` derives, field numbers from etcd's `rpc.proto`:
//!
//! - `etcdserverpb.KV/Put`: `PutRequest { key = 1, value = 2 }` → `PutResponse`
//!   (whose fields we ignore; prost skips unknown fields);
//! - `etcdserverpb.Maintenance/Status`: `StatusRequest {}` → `StatusResponse { header
//!   = 1 { member_id = 2 }, leader = 4 }`; the member whose id is `leader` is the leader.
//!
//! Calls go through `tonic::client::Grpc` on a plain HTTP/2 channel, as the Keyraft
//! client's do.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

use keyraft_testkit::free_port;

const PUT: &str = "/etcdserverpb.KV/Put";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// The bench's name for an etcd failure: `etcd:` and the gRPC status code.
pub(crate) fn error_code(status: &Status) -> String {
    format!("etcd:{:?}", status.code())
}

/// One connection to one etcd member.
#[derive(Clone)]
pub(crate) struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    /// A lazily connecting client of `endpoint` (`http://host:port`).
    pub(crate) fn new(endpoint: &str) -> Result<EtcdClient, String> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("bad etcd endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One put, no retry; `timeout` bounds it.
    pub(crate) async fn put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), Status> {
        let mut grpc = self.grpc.clone();
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut request = Request::new(PutRequest { key, value });
            request.set_timeout(timeout);
            grpc.unary(
                request,
                PathAndQuery::from_static(PUT),
                ProstCodec::<PutRequest, PutResponse>::default(),
            )
            .await
            .map(|_| ())
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("client deadline")))
    }

    /// `(this member's id, the leader's id as this member knows it)`.
    pub(crate) async fn status(&self) -> Result<(u64, u64), Status> {
        let mut grpc = self.grpc.clone();
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(
                Request::new(StatusRequest {}),
                PathAndQuery::from_static(STATUS),
                ProstCodec::<StatusRequest, StatusResponse>::default(),
            )
            .await
        };
        let resp = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("client deadline")))?
            .into_inner();
        let member = resp.header.map(|h| h.member_id).unwrap_or(0);
        Ok((member, resp.leader))
    }
}

/// Puts through a set of members with retries, the way etcd's Go client behaves
/// towards an unavailable cluster: on a failure, wait 25 ms and try the next member,
/// until the deadline.
pub(crate) async fn put_with_retry(
    clients: &[EtcdClient],
    start: usize,
    key: Vec<u8>,
    value: Vec<u8>,
    deadline: Instant,
) -> Result<(), String> {
    let mut i = start;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let client = &clients[i % clients.len()];
        let err = match client
            .put(key.clone(), value.clone(), left.min(Duration::from_secs(5)))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => error_code(&e),
        };
        if Instant::now() + Duration::from_millis(25) >= deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        i += 1;
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A local etcd cluster of `etcd` processes on 127.0.0.1 and free ports, each with its
/// data directory under `dir`, on etcd's default timing (100 ms heartbeat, 1 s election
/// timeout). Every process is killed when it is dropped.
pub(crate) struct EtcdCluster {
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<Member>,
    children: Vec<(usize, Child)>,
}

impl EtcdCluster {
    /// Lays out `n` members in `dir`.
    pub(crate) fn prepare(dir: &Path, binary: &Path, n: usize) -> Result<EtcdCluster, String> {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{}", i + 1),
                client_port: free_port().map_err(|e| e.to_string())?,
                peer_port: free_port().map_err(|e| e.to_string())?,
            });
        }
        Ok(EtcdCluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            members,
            children: Vec::new(),
        })
    }

    /// The client URLs, in member order.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Members by index.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Starts member `i` (again: a restarted member rejoins from its data directory).
    pub(crate) fn start(&mut self, i: usize) -> Result<(), String> {
        let m = self
            .members
            .get(i)
            .ok_or_else(|| format!("no etcd member {i}"))?;
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .map_err(|e| format!("etcd log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("etcd log: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg("keyraft-bench")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.children.push((i, child));
        Ok(())
    }

    /// The process id of a running member.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, c)| c.id())
    }

    /// `kill -9` member `i` and wait for it to be gone.
    pub(crate) fn kill(&mut self, i: usize) -> Result<(), String> {
        let pos = self
            .children
            .iter()
            .position(|(n, _)| *n == i)
            .ok_or_else(|| format!("etcd member {i} is not running"))?;
        let (_, mut child) = self.children.remove(pos);
        child.kill().map_err(|e| format!("killing etcd: {e}"))?;
        child.wait().map_err(|e| format!("waiting for etcd: {e}"))?;
        Ok(())
    }

    /// The index of the member every running member names as leader, if they agree.
    pub(crate) async fn leader(&self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if self.pid(i).is_none() {
                continue;
            }
            let (me, l) = EtcdClient::new(&m.client_url()).ok()?.status().await.ok()?;
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
            ids.push((i, me));
        }
        let l = leader?;
        ids.into_iter().find(|(_, me)| *me == l).map(|(i, _)| i)
    }

    /// Waits until every running member agrees on a leader and a put succeeds.
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let clients: Vec<EtcdClient> = self
            .endpoints()
            .iter()
            .map(|e| EtcdClient::new(e))
            .collect::<Result<_, _>>()?;
        while Instant::now() < deadline {
            for (i, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    let n = *i + 1;
                    return Err(format!(
                        "etcd member {n} exited ({status}); see {}",
                        self.dir.join(format!("m{n}.log")).display()
                    ));
                }
            }
            if let Some(l) = self.leader().await {
                if clients[l]
                    .put(b"ready".to_vec(), b"1".to_vec(), Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("timed out waiting for the etcd cluster".into())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn messages_use_etcds_field_numbers() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        // field 1 (bytes): 0x0a, len 1, 'k'; field 2 (bytes): 0x12, len 1, 'v'.
        assert_eq!(put.encode_to_vec(), vec![0x0a, 1, b'k', 0x12, 1, b'v']);
        // StatusResponse { header { cluster_id: 9, member_id: 7 }, version: "3.4", leader: 7 }
        let bytes = [
            0x0a, 4, 0x08, 9, 0x10, 7, // header
            0x12, 3, b'3', b'.', b'4', // version (skipped)
            0x20, 7, // leader
        ];
        let status = StatusResponse::decode(&bytes[..]).unwrap();
        assert_eq!(status.header.map(|h| h.member_id), Some(7));
        assert_eq!(status.leader, 7);
    }
}
