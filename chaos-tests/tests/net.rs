//! The fault proxies against a plain TCP echo server, and real three-node clusters: one
//! whose leader is cut off through them, one whose leader is replaced by a new node.
//!
//! The cluster test runs the `keyraft` binary built next to this test executable
//! (`cargo test --workspace` builds it; otherwise `cargo build -p keyraft-cli`).

mod common;
use common::keyraft_binary;
use std::future::Future;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use keyraft_chaos::cluster::{ChaosCluster, ClusterOptions};
use keyraft_chaos::net::{
    node_ip, shapes, LinkFault, Network, NodeId, Proxy, LOSS_RTO, MAX_LOSS_DELAY,
};

/// An echo server on a free port; runs until the test's runtime ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A network with one proxy, for node 2, in front of an echo server.
async fn echo_network() -> Network {
    let upstream = echo_server().await;
    Network::start([Proxy {
        node: 2,
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
    }])
    .await
    .unwrap()
}

/// Connects to node `to`'s proxy as node `from` (from `from`'s address).
async fn try_connect_as(network: &Network, from: NodeId, to: NodeId) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(node_ip(from).unwrap()), 0))?;
    socket.connect(network.proxy_addr(to).unwrap()).await
}

async fn connect_as(network: &Network, from: NodeId, to: NodeId) -> TcpStream {
    try_connect_as(network, from, to).await.unwrap()
}

/// A connection `from → to` is reset at once: the proxy accepts and resets it, so the
/// reset shows either in `connect` (when it arrives first) or in the first read.
async fn expect_refused(network: &Network, from: NodeId, to: NodeId) {
    match try_connect_as(network, from, to).await {
        Ok(mut stream) => expect_reset(&mut stream).await,
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Sends `msg` and reads the echo; the time it took. The deadline outlasts the longest
/// a lossy link may hold one chunk.
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let started = Instant::now();
    stream.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    let deadline = MAX_LOSS_DELAY + Duration::from_secs(10);
    tokio::time::timeout(deadline, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no echo within {deadline:?}"))
        .unwrap();
    assert_eq!(got, msg);
    started.elapsed()
}

/// Nothing arrives on `stream` within `wait` (a bounded wait is the only way to see an
/// absence).
async fn silent_for(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_err()
}

/// Reads until the stream is reset; panics on data, a clean end, or after 5 s.
async fn expect_reset(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the connection is reset within 5 s");
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
}

/// A 3-node cluster of real nodes behind the proxies, in `dir/cluster`.
async fn three_nodes(dir: &std::path::Path) -> ChaosCluster {
    ChaosCluster::start(ClusterOptions {
        nodes: 3,
        dir: dir.join("cluster"),
        binary: keyraft_binary(),
        ready_timeout: Duration::from_secs(30),
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_forwards_both_ways_and_counts_per_link() {
    let network = echo_network().await;
    let mut c = connect_as(&network, 1, 2).await;
    round_trip(&mut c, b"hello").await;
    round_trip(&mut c, b"world!").await;
    let there = network.link_stats(1, 2);
    let back = network.link_stats(2, 1);
    assert_eq!(there.connections, 1);
    assert_eq!(there.bytes, 11);
    assert_eq!(back.bytes, 11);
    assert_eq!(back.connections, 0, "node 2 opened nothing");
    assert!(network.faults().is_empty());
    assert_eq!(network.open_connections(1, 2), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_every_chunk_and_keeps_the_order() {
    let network = echo_network().await;
    let mut c = connect_as(&network, 1, 2).await;
    round_trip(&mut c, b"warm").await;
    network.set(
        1,
        2,
        LinkFault::Delay {
            ms: 150,
            jitter_ms: 50,
        },
    );
    assert!(round_trip(&mut c, b"slow").await >= Duration::from_millis(100));
    // Many small writes with jitter: delivered in the order written.
    let mut expected = Vec::new();
    for i in 0..50u8 {
        c.write_all(&[i]).await.unwrap();
        expected.push(i);
        tokio::task::yield_now().await;
    }
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, expected);
    assert!(network.link_stats(1, 2).delayed_chunks >= 2);
    assert_eq!(
        network.link_stats(2, 1).delayed_chunks,
        0,
        "only 1 -> 2 is slow"
    );
    network.heal();
    assert!(round_trip(&mut c, b"fast").await < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_a_retransmission_delay_not_lost_bytes() {
    let network = echo_network().await;
    let mut c = connect_as(&network, 1, 2).await;
    network.set(2, 1, LinkFault::Loss { percent: 40 });
    let mut slowest = Duration::ZERO;
    for i in 0..100u32 {
        slowest = slowest.max(round_trip(&mut c, &i.to_be_bytes()).await);
        if network.link_stats(2, 1).retransmitted_chunks > 0 {
            break;
        }
    }
    assert!(network.link_stats(2, 1).retransmitted_chunks > 0);
    assert!(slowest >= LOSS_RTO, "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_forwards_nothing_and_heal_resets_what_it_held() {
    let network = echo_network().await;
    let mut old = connect_as(&network, 1, 2).await;
    round_trip(&mut old, b"before").await;

    network.set(1, 2, LinkFault::Blackhole);
    assert_eq!(network.fault(1, 2), LinkFault::Blackhole);
    old.write_all(b"into the void").await.unwrap();
    assert!(silent_for(&mut old, Duration::from_millis(300)).await);
    // A new connection is accepted, and carries nothing.
    let mut new = connect_as(&network, 1, 2).await;
    new.write_all(b"anyone?").await.unwrap();
    assert!(silent_for(&mut new, Duration::from_millis(300)).await);
    let stats = network.link_stats(1, 2);
    assert_eq!(stats.held_chunks, 1, "{stats:?}");
    assert_eq!(stats.held_connections, 1, "{stats:?}");

    // Someone that is not a node (127.0.0.1) passes.
    let mut outsider = TcpStream::connect(network.proxy_addr(2).unwrap())
        .await
        .unwrap();
    round_trip(&mut outsider, b"outsider").await;

    network.heal();
    assert!(network.faults().is_empty());
    expect_reset(&mut old).await;
    expect_reset(&mut new).await;
    assert_eq!(network.link_stats(1, 2).resets, 2);
    let mut again = connect_as(&network, 1, 2).await;
    round_trip(&mut again, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_blackhole_stops_the_answers_too() {
    let network = echo_network().await;
    let mut c = connect_as(&network, 1, 2).await;
    round_trip(&mut c, b"open").await;
    network.set(2, 1, LinkFault::Blackhole);
    c.write_all(b"ping").await.unwrap();
    assert!(silent_for(&mut c, Duration::from_millis(300)).await);
    let there = network.link_stats(1, 2);
    assert_eq!(there.bytes, 8, "the request got through");
    assert_eq!(network.link_stats(2, 1).held_chunks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_resets_existing_connections_and_refuses_new_ones() {
    let network = echo_network().await;
    let mut old = connect_as(&network, 1, 2).await;
    round_trip(&mut old, b"before").await;

    network.set(1, 2, LinkFault::Reject);
    expect_reset(&mut old).await;
    expect_refused(&network, 1, 2).await;
    // The reverse direction is rejected too: a TCP connection needs both.
    network.set(1, 2, LinkFault::Pass);
    network.set(2, 1, LinkFault::Reject);
    expect_refused(&network, 1, 2).await;
    let stats = network.link_stats(1, 2);
    assert_eq!(stats.refused, 2, "{stats:?}");
    assert_eq!(stats.resets, 1, "{stats:?}");

    network.heal();
    let mut c = connect_as(&network, 1, 2).await;
    round_trip(&mut c, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_on_demand_and_on_a_schedule() {
    let network = echo_network().await;
    let mut c = connect_as(&network, 1, 2).await;
    round_trip(&mut c, b"x").await;
    assert_eq!(network.reset(1, 2), 1);
    expect_reset(&mut c).await;

    network.set(1, 2, LinkFault::ResetEvery { ms: 200 });
    let mut c = connect_as(&network, 1, 2).await;
    let opened = Instant::now();
    round_trip(&mut c, b"y").await;
    expect_reset(&mut c).await;
    assert!(opened.elapsed() >= Duration::from_millis(150));
    eventually(Duration::from_secs(2), "the reset connection to go", || {
        let open = network.open_connections(1, 2);
        async move { (open == 0).then_some(()) }
    })
    .await;
    assert_eq!(network.link_stats(1, 2).resets, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_applies_exactly_its_links() {
    let network = echo_network().await;
    network.set(
        3,
        2,
        LinkFault::Delay {
            ms: 10,
            jitter_ms: 0,
        },
    );
    let p = shapes::isolate(&[1, 2, 3], 1).unwrap();
    network.apply(&p, LinkFault::Reject);
    let faults = network.faults();
    assert_eq!(faults.len(), 4, "{faults:?}");
    assert!(faults.values().all(|f| *f == LinkFault::Reject));
    assert_eq!(
        network.fault(3, 2),
        LinkFault::Pass,
        "the delay was replaced"
    );
    expect_refused(&network, 1, 2).await;
    let mut c = connect_as(&network, 3, 2).await;
    round_trip(&mut c, b"3 still reaches 2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_follows_after_healing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes(dir.path()).await;
    let ids = cluster.ids();
    let old = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let others: Vec<NodeId> = ids.iter().copied().filter(|id| *id != old).collect();
    // Raft traffic runs through the proxies.
    let before = cluster.network().unwrap().link_stats(old, others[0]);
    assert!(before.bytes > 0, "{before:?}");

    let cut = Instant::now();
    let partition = shapes::isolate(&ids, old).unwrap();
    cluster
        .network()
        .unwrap()
        .apply(&partition, LinkFault::Blackhole);

    let new = eventually(Duration::from_secs(15), "a new leader", || {
        let cluster = &cluster;
        async move {
            match cluster.leader(Duration::from_secs(3)).await {
                Ok(l) if l != old => Some(l),
                _ => None,
            }
        }
    })
    .await;
    let elected = cut.elapsed();
    assert!(others.contains(&new));
    let through = cluster.client_of(others[0]).unwrap();
    let key = eventually(
        Duration::from_secs(10),
        "a CreateKey on the majority",
        || {
            let through = through.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(3),
                    through.create_key("made while the old leader was cut off"),
                )
                .await
                .ok()
                .and_then(Result::ok)
            }
        },
    )
    .await;
    // The fault met traffic: the old leader's messages were held.
    let held = cluster.network().unwrap().link_stats(old, new);
    assert!(held.held_chunks + held.held_connections > 0, "{held:?}");

    cluster.network().unwrap().heal();
    let healed = Instant::now();
    let old_client = cluster.client_of(old).unwrap();
    eventually(Duration::from_secs(15), "the old leader to follow", || {
        let old_client = old_client.clone();
        async move {
            let status = tokio::time::timeout(Duration::from_secs(3), old_client.cluster_status())
                .await
                .ok()?
                .ok()?;
            (status.leader == new).then_some(())
        }
    })
    .await;
    let followed = healed.elapsed();
    let described = old_client.describe_key(&key.key_id).await.unwrap();
    assert_eq!(described.key_id, key.key_id);
    eprintln!(
        "new leader {new} elected {elected:?} after the cut; old leader {old} followed {followed:?} after the heal; {:?} in all",
        started.elapsed()
    );
}

/// Replacing the leader: leadership moves, the old node is removed and wiped, a new node
/// with a fresh id joins behind a proxy of its own, decrypts what was encrypted before
/// it existed, and its Raft traffic runs through its proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_leader_is_wiped_and_its_successor_serves_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_nodes(dir.path()).await;
    let client = cluster.client().unwrap();
    let key = client.create_key("from before").await.unwrap();
    let context = keyraft_client::EncryptionContext::new();
    let sealed = client
        .encrypt(&key.key_id, b"older than node 4", &context)
        .await
        .unwrap();

    let old = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let new = cluster.replace(old, Duration::from_secs(60)).await.unwrap();
    assert_eq!(new, 4, "a removed id is never reused");
    assert!(!cluster.ids().contains(&old));
    assert!(cluster.ids().contains(&new));
    assert_eq!(cluster.retired(), vec![old]);
    assert!(
        !cluster.data_dir(old).exists(),
        "the old node's data is wiped"
    );

    let status = cluster.client().unwrap().cluster_status().await.unwrap();
    let mut members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    members.sort_unstable();
    let mut expected = cluster.ids();
    expected.sort_unstable();
    assert_eq!(members, expected);
    assert_ne!(status.leader, old);

    let fresh = cluster.client_of(new).unwrap();
    let opened = fresh
        .decrypt(&sealed.ciphertext_blob, &context, None)
        .await
        .unwrap();
    assert_eq!(opened.plaintext, b"older than node 4");
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    // The leader's connections to a follower run through the follower's proxy.
    let link = if leader == new {
        (
            new,
            cluster.ids().into_iter().find(|id| *id != new).unwrap(),
        )
    } else {
        (leader, new)
    };
    let through_proxy = cluster.network().unwrap().link_stats(link.0, link.1);
    assert!(through_proxy.bytes > 0, "{through_proxy:?}");
    // No node but the current members is counted as crashed.
    assert!(cluster.crashed().is_empty());
}
