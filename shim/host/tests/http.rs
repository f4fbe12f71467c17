//! A wasi:http component served on loopback: responses, hostile requests contained while the
//! server keeps serving, bounded concurrency, graceful shutdown, and the outbound policy.

use std::time::{Duration, Instant};

use anyhow::Result;
use wa8s_host::{EngineConfig, Grants, HostEngine, MemoryBudget, Program, ServeOptions, Server};

mod common;
use common::{get, serve};

const HTTP: &[u8] = wa8s_test_components::HTTP_COMPONENT;

fn limited() -> Grants {
    let mut grants = Grants::default();
    grants.limits.timeout = Some(Duration::from_millis(500));
    grants.limits.memory_bytes = Some(16 << 20);
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_component_answers_200_with_its_body() -> Result<()> {
    let server = serve(HTTP, limited(), Duration::from_secs(5)).await?;
    for _ in 0..3 {
        assert_eq!(
            get(server.addr, "/").await?,
            (200, "hello from wasm\n".into())
        );
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_contained_and_the_next_request_is_served() -> Result<()> {
    let server = serve(HTTP, limited(), Duration::from_secs(5)).await?;
    let (status, body) = get(server.addr, "/loop").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("deadline of 500ms"), "{body}");
    assert_eq!(get(server.addr, "/").await?.0, 200);

    assert_eq!(
        get(server.addr, "/grow").await?,
        (200, "grow refused\n".into())
    );
    assert_eq!(get(server.addr, "/").await?.0, 200);

    let (status, body) = get(server.addr, "/recurse").await?;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("call stack exhausted"), "{body}");
    assert_eq!(
        get(server.addr, "/").await?,
        (200, "hello from wasm\n".into())
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_memory_budget_and_only_the_ones_past_it_fail() -> Result<()>
{
    let budget = MemoryBudget::new(24 << 20);
    let mut grants = Grants::default();
    grants.limits.timeout = Some(Duration::from_secs(20));
    grants.limits.memory_bytes = Some(24 << 20);
    grants.limits.budget = Some(budget.clone());
    grants.limits.max_concurrent_requests = 50;
    let server = serve(HTTP, grants, Duration::from_secs(5)).await?;
    // One request asking for more than the whole budget fails alone.
    let (status, body) = get(server.addr, "/m40").await?;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("ran out of memory"), "{body}");
    assert_eq!(
        budget.refusals(),
        0,
        "the instance's own bound refused it first"
    );
    assert_eq!(budget.used(), 0);
    // Fifty at once, 1 MiB each (plus each instance's own first page): their sum is past the
    // budget, so some fail with the reason and the rest are served.
    let addr = server.addr;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        requests.spawn(async move { get(addr, "/m1").await.map_err(|e| e.to_string()) });
    }
    let answers = requests.join_all().await;
    let ok = answers.iter().filter(|a| matches!(a, Ok((200, _)))).count();
    for a in &answers {
        match a {
            Ok((200, _)) => {}
            Ok((500, body)) => assert!(body.contains("budget of 25165824"), "{body}"),
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert!(ok >= 10, "only {ok} of 50 served");
    // Everything is given back, and the server goes on serving.
    assert_eq!(budget.used(), 0);
    assert_eq!(get(server.addr, "/").await?.0, 200);
    assert_eq!(get(server.addr, "/m8").await?.0, 200);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_request_finish() -> Result<()> {
    let mut grants = Grants::default();
    grants.limits.timeout = Some(Duration::from_secs(20));
    let server = serve(HTTP, grants, Duration::from_secs(20)).await?;
    let addr = server.addr;
    let slow = tokio::spawn(async move { get(addr, "/spin").await });
    server.until_in_flight().await?;
    server.shutdown().await?;
    assert_eq!(slow.await??, (200, "hello from wasm\n".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_stuck_request_after_the_grace_period() -> Result<()> {
    let mut grants = Grants::default();
    grants.limits.timeout = Some(Duration::from_secs(60));
    let server = serve(HTTP, grants, Duration::from_millis(300)).await?;
    let addr = server.addr;
    let stats = server.stats.clone();
    let stuck = tokio::spawn(async move { get(addr, "/loop").await });
    server.until_in_flight().await?;
    let started = Instant::now();
    server.shutdown().await?;
    // The guest runs on its own task; shutdown must have stopped it, not just closed its
    // connection (a guest left spinning would hold a core until its 60 s deadline).
    assert_eq!(stats.guests(), 0, "a guest is still running after shutdown");
    assert_eq!(
        stats.in_flight(),
        0,
        "a request is still counted after shutdown"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?}",
        started.elapsed()
    );
    assert!(
        stuck.await?.is_err(),
        "the stuck request should have been cut off"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_program_cannot_be_served_and_nothing_is_bound() -> Result<()> {
    let engine = HostEngine::new(&EngineConfig::default())?;
    let program = Program::load(&engine, wa8s_test_components::HELLO_COMPONENT)?;
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?;
    drop(probe);
    let err = Server::bind(
        &program,
        Grants::default(),
        ServeOptions {
            addr,
            shutdown_grace: Duration::from_secs(1),
        },
    )
    .await
    .expect_err("refused");
    assert!(
        err.to_string()
            .contains("does not export wasi:http/incoming-handler"),
        "{err}"
    );
    assert!(
        std::net::TcpListener::bind(addr).is_ok(),
        "the port was left bound"
    );
    Ok(())
}
