//! Resolving against a real registry, counting what it is asked: objects naming the same tag
//! share one poll, a poll is a HEAD, and a digest's manifest is read once.

use std::time::Duration;

use anyhow::Result;
use wa8s_api::Module;
use wa8s_e2e::Registry;
use wa8s_oci::RegistryConfig;
use wa8s_operator::resolve::{OciResolver, Resolve};
use wa8s_test_components as guests;

fn resolver(registry: &Registry, fresh_for: Duration) -> OciResolver {
    OciResolver::new(
        RegistryConfig {
            mirrors: [("ghcr.io".to_owned(), registry.addr().to_owned())].into(),
            insecure: vec![registry.addr().to_owned()],
            ..RegistryConfig::default()
        },
        fresh_for,
    )
}

fn module() -> Module {
    serde_json::from_value(serde_json::json!({"registry": "ghcr.io/myorg/shared", "tag": "v1"}))
        .expect("a module")
}

async fn push(registry: &Registry, wasm: &[u8]) -> Result<String> {
    let pushed = wa8s_oci::Registry::new(wa8s_oci::RegistryOptions::default())
        .push(wasm, &format!("{}/myorg/shared:v1", registry.addr()))
        .await?;
    Ok(pushed.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_objects_naming_one_tag_cost_the_registry_one_head_and_one_manifest_read()
-> Result<()> {
    let registry = Registry::start()?;
    let digest = push(&registry, guests::HTTP_COMPONENT).await?;
    let before = registry.content_requests("myorg/shared");
    let r = resolver(&registry, Duration::from_secs(60));
    let m = module();
    let resolves = (0..100).map(|_| r.resolve(&m, Vec::new()));
    for result in futures::future::join_all(resolves).await {
        let (_, resolved) = result.map_err(anyhow::Error::msg)?;
        assert_eq!(resolved.digest, digest);
    }
    let after = registry.content_requests("myorg/shared");
    let asked = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    // One poll of the tag (HEAD), then the digest's manifest and its wasm config, once.
    assert_eq!(
        (
            asked("HEAD manifest"),
            asked("GET manifest"),
            asked("GET blob")
        ),
        (1, 1, 1),
        "{after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_seen_once_the_shared_answer_is_older_than_its_freshness() -> Result<()> {
    let registry = Registry::start()?;
    let first = push(&registry, guests::HTTP_COMPONENT).await?;
    let fresh_for = Duration::from_secs(2);
    let r = resolver(&registry, fresh_for);
    async fn digest(r: &OciResolver) -> Result<String> {
        let (_, resolved) = r
            .resolve(&module(), Vec::new())
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(resolved.digest)
    }
    assert_eq!(digest(&r).await?, first);
    let second = push(&registry, guests::HELLO_COMPONENT).await?;
    assert_ne!(first, second);
    // Within the freshness the shared answer stands; after it, the new digest and its kind.
    assert_eq!(digest(&r).await?, first);
    tokio::time::sleep(fresh_for + Duration::from_millis(200)).await;
    assert_eq!(digest(&r).await?, second);
    let (_, resolved) = r
        .resolve(&module(), Vec::new())
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(resolved.kind, wa8s_operator::desired::ModuleKind::Cli);
    Ok(())
}
