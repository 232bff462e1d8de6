use std::sync::Arc;

use super::*;
use crate::gateway::provider::ObservedFunction;
use crate::gateway::provider::upstreams::UpstreamsProvider;

fn registry(dir: &std::path::Path) -> Registry {
    let store = Arc::new(Store::open(dir).unwrap());
    let secrets = Arc::new(SecretStore::open(dir).unwrap());
    let provider = Arc::new(UpstreamsProvider::new(Some("http://{name}:8080".into())));
    Registry::open(store, provider, secrets).unwrap()
}

fn spec(name: &str, topic: &str) -> FunctionDeployment {
    FunctionDeployment {
        service: name.into(),
        annotations: Some([("topic".to_string(), topic.to_string())].into()),
        ..FunctionDeployment::default()
    }
}

#[tokio::test]
async fn changes_of_the_deployed_set_are_seen_and_replica_counts_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    let mut changes = r.watch_changes();
    assert!(!changes.has_changed().unwrap());

    r.deploy(spec("a", "x"), false).await.unwrap();
    assert!(changes.has_changed().unwrap(), "a deployment");
    changes.mark_unchanged();
    r.scale("a", None, 2).unwrap();
    assert!(!changes.has_changed().unwrap(), "a replica count");
    r.deploy(spec("a", "y"), true).await.unwrap();
    assert!(changes.has_changed().unwrap(), "an update");
    changes.mark_unchanged();

    // What a provider that holds the set shows: the same set is no change, another spec or
    // a function gone is.
    let seen = |topic: &str, replicas| ObservedFunction {
        spec: spec("a", topic),
        replicas,
        created_at: String::new(),
    };
    r.observe(&[seen("y", 3)]);
    assert!(
        !changes.has_changed().unwrap(),
        "the same spec, another count"
    );
    r.observe(&[seen("z", 3)]);
    assert!(changes.has_changed().unwrap(), "another spec");
    changes.mark_unchanged();
    r.observe(&[]);
    assert!(changes.has_changed().unwrap(), "a function gone");
    changes.mark_unchanged();

    r.deploy(spec("b", "x"), false).await.unwrap();
    changes.mark_unchanged();
    r.remove("b", None).await.unwrap();
    assert!(changes.has_changed().unwrap(), "a removal");
}
