//! The Redis test harness itself (groundwork for issue 17): every Redis test starts its
//! own `redis-server`, and outage tests stop and restart it on the same port.

use crate::common::redis::RedisServer;

#[tokio::test]
async fn harness_starts_isolated_servers_and_survives_an_outage() {
    let mut a = RedisServer::start().await;
    let b = RedisServer::start().await;
    assert_ne!(a.url(), b.url(), "each test gets its own server");

    assert_eq!(a.command("SET k 1").await.unwrap(), "+OK\r\n");
    assert_eq!(
        b.command("GET k").await.unwrap(),
        "$-1\r\n",
        "servers share nothing"
    );

    a.stop();
    assert!(
        a.command("PING").await.is_err(),
        "a stopped server refuses connections"
    );
    a.restart().await;
    assert_eq!(
        a.command("GET k").await.unwrap(),
        "$-1\r\n",
        "no persistence across restart"
    );
}
