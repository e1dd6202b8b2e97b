//! Membership of in-process nodes on a real Redis (`scripts/redis`): what
//! a library user of `Node` sees, beside the process tests of
//! `cli/tests/cluster.rs`.

use kodo_actors::{Flows, NodeOptions};
use kodo_tests::*;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_leaves_the_list_for_good_and_is_not_taken_over() {
    let server = Server::redis();
    let options = redis_options(&server.url, "one", 1);
    let node = |name: &str, consumer: &str| {
        let options = kodo_transport::RedisOptions {
            consumer: consumer.into(),
            ..options.clone()
        };
        let name = name.to_string();
        async move {
            let cluster = redis_cluster(&options).await;
            let transport = redis_transport(options).await;
            let options = NodeOptions {
                node: name,
                lease: LEASE,
                ..NodeOptions::default()
            };
            TestNode::start_on(Flows::default(), transport, cluster, options).await
        }
    };
    let one = node("one", "one").await;
    let two = node("two", "two").await;
    let names = |members: Vec<kodo_cluster::Member>| -> Vec<(String, bool)> {
        members.into_iter().map(|m| (m.name, m.live)).collect()
    };
    let listed = one.node.cluster().members().await.unwrap();
    assert_eq!(
        names(listed),
        [("one".to_string(), true), ("two".to_string(), true)]
    );

    let report = two.node.shutdown("test over").await;
    assert!(report.all_stored());
    // The process lives on (a library user's): for two leases, "two" never
    // comes back, and nobody declares it lost.
    let mut conn = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lost_key = format!("{}:lost:two", options.prefix);
    let watched = Instant::now();
    while watched.elapsed() < LEASE * 2 {
        let listed = one.node.cluster().members().await.unwrap();
        assert_eq!(names(listed), [("one".to_string(), true)]);
        let lost: bool = redis::cmd("EXISTS")
            .arg(&lost_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!lost, "a node that shut down was declared lost");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    one.node.shutdown("test over").await;
}
