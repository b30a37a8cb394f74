//! The Kubernetes API semantics the operator depends on, as tests over a `kube::Client`.
//! They run against the in-memory stand-in by default and against a real cluster when
//! `RECONNECT_TEST_KUBECONFIG` is set; only the fault-injection and request-log tests are
//! stand-in specific, and they say so when skipped.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions, PropagationPolicy, VersionMatch, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::runtime::watcher;
use reconnect_apiserver::{RequestMatch, TestCluster, Verb, test_cluster};
use reconnect_operator::api::ConnectorCredential;
use serde_json::{Value, json};

/// Generous bound for anything a real cluster does asynchronously (GC, namespace cleanup).
const WAIT: Duration = Duration::from_secs(60);

fn credentials(cluster: &TestCluster) -> Api<DynamicObject> {
    Api::default_namespaced_with(
        cluster.client.clone(),
        &ApiResource::erase::<ConnectorCredential>(&()),
    )
}

fn secrets(cluster: &TestCluster) -> Api<Secret> {
    Api::default_namespaced(cluster.client.clone())
}

fn credential(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "reconnect.dev/v1alpha1",
        "kind": "ConnectorCredential",
        "metadata": {"name": name},
        "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": format!("{name}-source")}},
    }))
    .expect("static credential")
}

fn credential_with(name: &str, spec: Value) -> DynamicObject {
    let mut cc = credential(name);
    cc.data["spec"] = spec;
    cc
}

fn secret(name: &str, labels: Value) -> Secret {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}}),
    )
    .expect("static secret")
}

/// The `Status` of a failed call, or a panic naming what succeeded instead.
fn status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    let mut names: Vec<String> = items.iter().filter_map(|o| o.meta().name.clone()).collect();
    names.sort();
    names
}

fn rv<K: kube::Resource>(object: &K) -> String {
    object
        .meta()
        .resource_version
        .clone()
        .expect("server sets resourceVersion")
}

/// Sends a raw request through the client (for headers and bodies kube's typed API hides).
async fn raw(cluster: &TestCluster, request: http::Request<Vec<u8>>) -> Result<Value, kube::Error> {
    cluster.client.request::<Value>(request).await
}

/// Collects watch events until `done` holds, failing after `WAIT`.
async fn watch_until<K, S>(
    stream: S,
    done: impl FnMut(&[WatchEvent<K>]) -> bool,
) -> Vec<WatchEvent<K>>
where
    S: futures::Stream<Item = Result<WatchEvent<K>, kube::Error>>,
{
    watch_until_within(WAIT, stream, done).await
}

async fn watch_until_within<K, S>(
    wait: Duration,
    stream: S,
    mut done: impl FnMut(&[WatchEvent<K>]) -> bool,
) -> Vec<WatchEvent<K>>
where
    S: futures::Stream<Item = Result<WatchEvent<K>, kube::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut seen = Vec::new();
    tokio::time::timeout(wait, async {
        while !done(&seen) {
            match stream.next().await {
                Some(event) => seen.push(event.expect("watch stream item")),
                None => panic!("watch ended before the expected events"),
            }
        }
    })
    .await
    .expect("expected watch events within the timeout");
    seen
}

fn event_names<K: kube::Resource>(events: &[WatchEvent<K>]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(o) => Some(("ADDED".into(), o.meta().name.clone()?)),
            WatchEvent::Modified(o) => Some(("MODIFIED".into(), o.meta().name.clone()?)),
            WatchEvent::Deleted(o) => Some(("DELETED".into(), o.meta().name.clone()?)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn secrets_support_create_get_replace_and_delete() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let created = api
        .create(&PostParams::default(), &secret("s1", json!({})))
        .await
        .unwrap();
    // stringData is folded into base64 data; uid, timestamps and resourceVersion are server-set.
    assert_eq!(created.data.as_ref().unwrap()["k"].0, b"v");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let mut fetched = api.get("s1").await.unwrap();
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    fetched.metadata.labels = Some([("replaced".to_string(), "yes".to_string())].into());
    let replaced = api
        .replace("s1", &PostParams::default(), &fetched)
        .await
        .unwrap();
    assert_eq!(
        replaced.metadata.labels.as_ref().unwrap()["replaced"],
        "yes"
    );
    assert_ne!(rv(&replaced), rv(&created));
    api.delete("s1", &DeleteParams::default()).await.unwrap();
    assert!(status(api.get("s1").await).is_not_found());
    cluster.cleanup().await;
}

#[tokio::test]
async fn creating_an_existing_name_is_already_exists_and_generate_name_picks_fresh_names() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("dup", json!({})))
        .await
        .unwrap();
    let err = status(
        api.create(&PostParams::default(), &secret("dup", json!({})))
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let mut generated = secret("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let a = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(
        a.starts_with("gen-") && b.starts_with("gen-") && a != b,
        "{a} {b}"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn writes_with_a_stale_resource_version_conflict() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let first = api
        .create(&PostParams::default(), &secret("occ", json!({})))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    api.replace("occ", &PostParams::default(), &newer)
        .await
        .unwrap();
    // `first` still carries the old resourceVersion.
    let err = status(api.replace("occ", &PostParams::default(), &first).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let stale_patch = json!({"metadata": {"resourceVersion": rv(&first), "labels": {"v": "3"}}});
    let err = status(
        api.patch("occ", &PatchParams::default(), &Patch::Merge(&stale_patch))
            .await,
    );
    assert_eq!(err.code, 409);
    assert_eq!(
        api.get("occ").await.unwrap().metadata.labels.unwrap()["v"],
        "2"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn objects_in_a_missing_namespace_are_not_found() {
    let cluster = test_cluster().await;
    let api: Api<Secret> = Api::namespaced(
        cluster.client.clone(),
        &format!("{}-absent", cluster.namespace),
    );
    let err = status(
        api.create(&PostParams::default(), &secret("x", json!({})))
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    cluster.cleanup().await;
}

#[tokio::test]
async fn cluster_wide_lists_span_namespaces() {
    let cluster = test_cluster().await;
    let other = format!("{}-b", cluster.namespace);
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": other, "labels": {"reconnect.dev/test-namespace": "true"}}}),
    )
    .unwrap();
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let tag = json!({"test": cluster.namespace});
    secrets(&cluster)
        .create(&PostParams::default(), &secret("here", tag.clone()))
        .await
        .unwrap();
    Api::<Secret>::namespaced(cluster.client.clone(), &other)
        .create(&PostParams::default(), &secret("there", tag))
        .await
        .unwrap();
    let all = Api::<Secret>::all(cluster.client.clone())
        .list(&ListParams::default().labels(&format!("test={}", cluster.namespace)))
        .await
        .unwrap();
    let mut found: Vec<(String, String)> = all
        .items
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap(),
                s.metadata.name.clone().unwrap(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (cluster.namespace.clone(), "here".to_string()),
            (other.clone(), "there".to_string())
        ]
    );
    // A cluster-wide watch sees changes in every namespace.
    let selector = format!("test={}", cluster.namespace);
    let stream = Api::<Secret>::all(cluster.client.clone())
        .watch(
            &WatchParams::default().labels(&selector),
            &all.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap();
    for (ns, name) in [
        (cluster.namespace.as_str(), "here2"),
        (other.as_str(), "there2"),
    ] {
        Api::<Secret>::namespaced(cluster.client.clone(), ns)
            .create(
                &PostParams::default(),
                &secret(name, json!({"test": cluster.namespace})),
            )
            .await
            .unwrap();
    }
    let events = watch_until(stream, |seen| seen.len() >= 2).await;
    assert_eq!(
        event_names(&events),
        vec![
            ("ADDED".into(), "here2".into()),
            ("ADDED".into(), "there2".into())
        ]
    );
    Api::<Namespace>::all(cluster.client.clone())
        .delete(&other, &DeleteParams::default())
        .await
        .unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn label_selectors_support_every_operator() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    for (name, labels) in [
        ("a", json!({"tier": "web", "env": "prod"})),
        ("b", json!({"tier": "api"})),
        ("c", json!({"env": "dev"})),
    ] {
        api.create(&PostParams::default(), &secret(name, labels))
            .await
            .unwrap();
    }
    let cases = [
        ("tier=web", vec!["a"]),
        ("tier==api", vec!["b"]),
        ("tier!=web", vec!["b", "c"]),
        ("tier in (web,api)", vec!["a", "b"]),
        ("tier notin (web)", vec!["b", "c"]),
        ("env", vec!["a", "c"]),
        ("!env", vec!["b"]),
        ("tier,env=prod", vec!["a"]),
    ];
    for (selector, expected) in cases {
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(names(&list.items), expected, "selector {selector}");
    }
    let err = status(api.list(&ListParams::default().labels("a b c")).await);
    assert_eq!(err.code, 400);
    cluster.cleanup().await;
}

#[tokio::test]
async fn field_selectors_filter_by_name_and_namespace() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    for name in ["f1", "f2"] {
        api.create(&PostParams::default(), &secret(name, json!({})))
            .await
            .unwrap();
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=f2"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), vec!["f2"]);
    let not_name = api
        .list(&ListParams::default().fields("metadata.name!=f2"))
        .await
        .unwrap();
    assert!(
        names(&not_name.items).contains(&"f1".to_string())
            && !names(&not_name.items).contains(&"f2".to_string())
    );
    let all = Api::<Secret>::all(cluster.client.clone())
        .list(&ListParams::default().fields(&format!(
            "metadata.namespace=={},metadata.name=f1",
            cluster.namespace
        )))
        .await
        .unwrap();
    assert_eq!(names(&all.items), vec!["f1"]);
    cluster.cleanup().await;
}

#[tokio::test]
async fn lists_paginate_with_limit_and_continue() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &secret(&format!("p{i}"), json!({"page": "yes"})),
        )
        .await
        .unwrap();
    }
    let mut params = ListParams::default().labels("page=yes").limit(2);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(names(&page.items));
        pages += 1;
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec!["p0", "p1", "p2", "p3", "p4"]);
    cluster.cleanup().await;
}

#[tokio::test]
async fn exact_resource_version_lists_return_the_past_state() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("before", json!({})))
        .await
        .unwrap();
    let then = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &secret("after", json!({})))
        .await
        .unwrap();
    let exact = api
        .list(
            &ListParams::default()
                .at(&then)
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(names(&exact.items), vec!["before"]);
    let not_older = api
        .list(
            &ListParams::default()
                .at(&then)
                .matching(VersionMatch::NotOlderThan),
        )
        .await
        .unwrap();
    assert_eq!(names(&not_older.items), vec!["after", "before"]);
    cluster.cleanup().await;
}

#[tokio::test]
async fn watches_stream_added_modified_and_deleted() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = api.watch(&WatchParams::default(), &start).await.unwrap();
    api.create(&PostParams::default(), &secret("w", json!({})))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let events = watch_until(stream, |seen| seen.len() >= 3).await;
    let expected: Vec<(String, String)> = ["ADDED", "MODIFIED", "DELETED"]
        .iter()
        .map(|t| (t.to_string(), "w".to_string()))
        .collect();
    assert_eq!(event_names(&events), expected);
    cluster.cleanup().await;
}

#[tokio::test]
async fn watches_resumed_from_a_resource_version_replay_later_events() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let first = api
        .create(&PostParams::default(), &secret("r1", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &secret("r2", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &secret("r3", json!({})))
        .await
        .unwrap();
    let stream = api
        .watch(&WatchParams::default(), &rv(&first))
        .await
        .unwrap();
    let events = watch_until(stream, |seen| seen.len() >= 2).await;
    assert_eq!(
        event_names(&events),
        vec![("ADDED".into(), "r2".into()), ("ADDED".into(), "r3".into())]
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn watching_from_a_too_old_resource_version_is_expired() {
    // An injected fault: the stand-in forgets its history. A real kube-apiserver serves
    // watches and exact lists from its watch cache, which keeps at least 75 s of events
    // whatever etcd has compacted (tried: compacting etcd changes neither), so a test cannot
    // make them expire there in reasonable time.
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("watching_from_a_too_old_resource_version_is_expired")
    else {
        return;
    };
    let api = secrets(&cluster);
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &secret(&format!("old{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    standin.set_history_limit(1);
    let stream = api.watch(&WatchParams::default(), "1").await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event")
        .expect("stream open")
        .unwrap();
    match first {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let err = status(
        api.list(&ListParams::default().at("1").matching(VersionMatch::Exact))
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    cluster.cleanup().await;
}

#[tokio::test]
async fn watches_send_bookmarks_when_allowed() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("b", json!({})))
        .await
        .unwrap();
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // kube-apiserver sends bookmarks about once a minute; the stand-in every second.
    let stream = api
        .watch(&WatchParams::default().timeout(120), &start)
        .await
        .unwrap();
    let events = watch_until_within(Duration::from_secs(150), stream, |seen| {
        seen.iter().any(|e| matches!(e, WatchEvent::Bookmark(_)))
    })
    .await;
    let bookmark_rv = events.iter().find_map(|e| match e {
        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.parse::<u64>().unwrap()),
        _ => None,
    });
    assert!(bookmark_rv.unwrap() >= start.parse::<u64>().unwrap());
    cluster.cleanup().await;
}

#[tokio::test]
async fn watches_end_after_timeout_seconds() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let drained = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>()).await;
    assert!(drained.expect("the watch ends by itself").is_ok());
    cluster.cleanup().await;
}

#[tokio::test]
async fn objects_leaving_a_watched_selection_are_reported_deleted() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    let created = api
        .create(
            &PostParams::default(),
            &secret("sel", json!({"watched": "yes"})),
        )
        .await
        .unwrap();
    let stream = api
        .watch(&WatchParams::default().labels("watched=yes"), &rv(&created))
        .await
        .unwrap();
    api.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "no"}}})),
    )
    .await
    .unwrap();
    let events = watch_until(stream, |seen| !seen.is_empty()).await;
    assert_eq!(event_names(&events), vec![("DELETED".into(), "sel".into())]);
    cluster.cleanup().await;
}

#[tokio::test]
async fn secret_metadata_can_be_listed_and_watched_without_data() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("meta", json!({"m": "1"})))
        .await
        .unwrap();
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), vec!["meta"]);
    let start = list.metadata.resource_version.unwrap();
    // On the wire: PartialObjectMetadataList, items without `data`.
    let request = http::Request::get(format!("/api/v1/namespaces/{}/secrets", cluster.namespace))
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let raw_list = raw(&cluster, request).await.unwrap();
    assert_eq!(raw_list["kind"], "PartialObjectMetadataList");
    assert_eq!(raw_list["items"][0]["kind"], "PartialObjectMetadata");
    assert!(raw_list["items"][0].get("data").is_none());
    let stream = api
        .watch_metadata(&WatchParams::default(), &start)
        .await
        .unwrap();
    api.patch(
        "meta",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"m": "2"}}})),
    )
    .await
    .unwrap();
    let events = watch_until(stream, |seen| !seen.is_empty()).await;
    match &events[0] {
        WatchEvent::Modified(meta) => assert_eq!(meta.metadata.labels.as_ref().unwrap()["m"], "2"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    cluster.cleanup().await;
}

#[tokio::test]
async fn status_subresource_separates_spec_and_status_writes() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let mut cc = credential("st");
    cc.data["status"] = json!({"phase": "Connected"});
    let created = api.create(&PostParams::default(), &cc).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status on create is ignored"
    );
    assert_eq!(created.metadata.generation, Some(1));
    // The status endpoint changes only status, even when the body carries other changes.
    let mut body = created.clone();
    body.data["status"] = json!({"phase": "Connected"});
    body.data["spec"]["provider"] = json!("microsoft");
    let updated = api
        .replace_status("st", &PostParams::default(), &body)
        .await
        .unwrap();
    assert_eq!(updated.data["status"]["phase"], "Connected");
    assert_eq!(updated.data["spec"]["provider"], "procore");
    assert_eq!(
        updated.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    // The main resource ignores status; a label change keeps the generation too.
    let patched = api
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"l": "1"}}, "status": {"phase": "Pending"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["phase"], "Connected");
    assert_eq!(patched.metadata.generation, Some(1));
    let spec_change = api
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"requiredPermissions": ["projects.read"]}})),
        )
        .await
        .unwrap();
    assert_eq!(spec_change.metadata.generation, Some(2));
    let status_patch = api
        .patch_status(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "ConnectionLost"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            status_patch.data["status"]["phase"].as_str(),
            status_patch.metadata.generation
        ),
        (Some("ConnectionLost"), Some(2))
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn merge_json_and_strategic_merge_patches_apply_their_semantics() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(
        &PostParams::default(),
        &secret("p", json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    let merged = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "c": "3"}}})),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.unwrap();
    assert_eq!(
        (labels.get("a"), labels["b"].as_str(), labels["c"].as_str()),
        (None, "2", "3")
    );
    // kube's typed JSON patch needs a feature we do not enable; send it raw.
    let json_patch = |ops: Value| {
        http::Request::patch(format!(
            "/api/v1/namespaces/{}/secrets/p",
            cluster.namespace
        ))
        .header("Content-Type", "application/json-patch+json")
        .body(ops.to_string().into_bytes())
        .unwrap()
    };
    let patched = raw(
        &cluster,
        json_patch(json!([
            {"op": "test", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/b", "value": "20"},
        ])),
    )
    .await
    .unwrap();
    assert_eq!(patched["metadata"]["labels"]["b"], "20");
    let err = status(
        raw(
            &cluster,
            json_patch(json!([{"op": "test", "path": "/metadata/labels/b", "value": "2"}])),
        )
        .await,
    );
    assert_eq!(err.code, 422);

    let deployments: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "main", "image": "main:1"}, {"name": "side", "image": "side:1"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "side:2"}]}}}});
    let rolled = deployments
        .patch("d", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let containers = rolled.spec.unwrap().template.spec.unwrap().containers;
    let images: Vec<(String, String)> = containers
        .into_iter()
        .map(|c| (c.name, c.image.unwrap()))
        .collect();
    assert_eq!(
        images,
        vec![
            ("main".into(), "main:1".into()),
            ("side".into(), "side:2".into())
        ]
    );

    // Custom resources do not support strategic merge patch.
    credentials(&cluster)
        .create(&PostParams::default(), &credential("smp"))
        .await
        .unwrap();
    let err = status(
        credentials(&cluster)
            .patch(
                "smp",
                &PatchParams::default(),
                &Patch::Strategic(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
    );
    assert_eq!(err.code, 415);
    cluster.cleanup().await;
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_merges_conditions_by_type() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let applied = api
        .patch(
            "ssa",
            &PatchParams::apply("tests"),
            &Patch::Apply(credential("ssa")),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["spec"]["provider"], "procore");
    // A second manager's apply merges into the object instead of replacing it.
    let labels = json!({"apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential", "metadata": {"name": "ssa", "labels": {"team": "a"}}});
    let merged = api
        .patch(
            "ssa",
            &PatchParams::apply("labeller"),
            &Patch::Apply(&labels),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            merged.data["spec"]["provider"].as_str(),
            merged.metadata.labels.unwrap()["team"].as_str()
        ),
        (Some("procore"), "a")
    );

    let condition = |t: &str, s: &str| json!({"type": t, "status": s, "reason": "Test", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"});
    let status_doc = |conditions: Vec<Value>| json!({"apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential", "metadata": {"name": "ssa"}, "status": {"conditions": conditions}});
    api.patch_status(
        "ssa",
        &PatchParams::apply("a").force(),
        &Patch::Apply(status_doc(vec![
            condition("Ready", "False"),
            condition("Connected", "False"),
        ])),
    )
    .await
    .unwrap();
    let after = api
        .patch_status(
            "ssa",
            &PatchParams::apply("b").force(),
            &Patch::Apply(status_doc(vec![condition("Ready", "True")])),
        )
        .await
        .unwrap();
    let conditions: Vec<(String, String)> = after.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(conditions.len(), 2);
    assert!(
        conditions.contains(&("Ready".into(), "True".into()))
            && conditions.contains(&("Connected".into(), "False".into()))
    );

    // A manager's next apply removes what it stopped applying, but not what others own.
    let mut with_endpoint = credential("ssa");
    with_endpoint.data["spec"]["endpoint"] = json!("https://sandbox.procore.com");
    let set = api
        .patch(
            "ssa",
            &PatchParams::apply("tests"),
            &Patch::Apply(&with_endpoint),
        )
        .await
        .unwrap();
    assert_eq!(set.data["spec"]["endpoint"], "https://sandbox.procore.com");
    let dropped = api
        .patch(
            "ssa",
            &PatchParams::apply("tests"),
            &Patch::Apply(credential("ssa")),
        )
        .await
        .unwrap();
    assert!(
        dropped.data["spec"].get("endpoint").is_none(),
        "{}",
        dropped.data["spec"]
    );
    let after_drop = api
        .patch_status(
            "ssa",
            &PatchParams::apply("a").force(),
            &Patch::Apply(status_doc(vec![condition("Connected", "False")])),
        )
        .await
        .unwrap();
    let types: Vec<&str> = after_drop.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(
        types.len(),
        2,
        "Ready is still owned by manager b: {types:?}"
    );
    let after_drop = api
        .patch_status(
            "ssa",
            &PatchParams::apply("b").force(),
            &Patch::Apply(status_doc(vec![])),
        )
        .await
        .unwrap();
    let types: Vec<&str> = after_drop.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, vec!["Connected"]);

    // Applying a different value to a field another manager owns conflicts unless forced.
    api.patch(
        "ssa",
        &PatchParams::apply("tests"),
        &Patch::Apply(&with_endpoint),
    )
    .await
    .unwrap();
    let takeover = json!({"apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
        "metadata": {"name": "ssa"}, "spec": {"endpoint": "https://other.example.com"}});
    let err = status(
        api.patch(
            "ssa",
            &PatchParams::apply("other"),
            &Patch::Apply(&takeover),
        )
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("tests") && err.message.contains(".spec.endpoint"),
        "{}",
        err.message
    );
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("other").force(),
            &Patch::Apply(&takeover),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["endpoint"], "https://other.example.com");

    // Apply without a field manager is refused.
    let request = http::Request::patch(format!(
        "/apis/reconnect.dev/v1alpha1/namespaces/{}/connectorcredentials/ssa",
        cluster.namespace
    ))
    .header("Content-Type", "application/apply-patch+yaml")
    .body(serde_json::to_vec(&labels).unwrap())
    .unwrap();
    let err = status(raw(&cluster, request).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    cluster.cleanup().await;
}

#[tokio::test]
async fn server_side_apply_removes_fields_a_manager_stops_applying() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    api.patch(
        "drop",
        &PatchParams::apply("tests"),
        &Patch::Apply(credential("drop")),
    )
    .await
    .unwrap();
    let doc = |status: Value| json!({"apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential", "metadata": {"name": "drop"}, "status": status});
    let rejected = json!({"revision": "sha256:1", "reason": "PermissionMismatch", "message": "m", "at": "2025-01-01T00:00:00Z"});
    api.patch_status(
        "drop",
        &PatchParams::apply("operator").force(),
        &Patch::Apply(doc(
            json!({"phase": "Connected", "consecutiveFailures": 2, "rejected": rejected}),
        )),
    )
    .await
    .unwrap();
    // Another manager's field survives the operator's next apply...
    api.patch_status(
        "drop",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(doc(json!({"lastRotated": "2025-01-02T00:00:00Z"}))),
    )
    .await
    .unwrap();
    // ...which leaves out fields it applied before: those are removed.
    let after = api
        .patch_status(
            "drop",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(doc(json!({"phase": "Connected"}))),
        )
        .await
        .unwrap();
    let status = &after.data["status"];
    assert_eq!(status["phase"], "Connected");
    assert!(status.get("consecutiveFailures").is_none(), "{status}");
    assert!(status.get("rejected").is_none(), "{status}");
    assert_eq!(status["lastRotated"], "2025-01-02T00:00:00Z");
    cluster.cleanup().await;
}

#[tokio::test]
async fn fail_after_lets_matching_requests_through_then_fails_them() {
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("fail_after_lets_matching_requests_through_then_fails_them")
    else {
        return;
    };
    standin.fail_after(
        1,
        1,
        RequestMatch::any()
            .verb(Verb::Create)
            .path_contains("/secrets"),
        500,
    );
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("first", json!({})))
        .await
        .unwrap();
    let err = status(
        api.create(&PostParams::default(), &secret("second", json!({})))
            .await,
    );
    assert_eq!(err.code, 500);
    api.create(&PostParams::default(), &secret("third", json!({})))
        .await
        .unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn custom_resources_are_validated_against_the_schema() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let invalid = |name: &str, spec: Value| credential_with(name, spec);
    let cases = [
        (
            invalid(
                "enum",
                json!({"provider": "nope", "auth": "ApiKey", "secretRef": {"name": "s"}}),
            ),
            "spec.provider",
            "Unsupported value",
        ),
        (
            invalid(
                "required",
                json!({"provider": "procore", "auth": "ClientCredentials"}),
            ),
            "spec.secretRef",
            "Required value",
        ),
        (
            invalid(
                "pattern",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "Not_A_Name"}}),
            ),
            "spec.secretRef.name",
            "should match",
        ),
        (
            invalid(
                "too-long",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "refreshBefore": "1".repeat(40) + "s"}),
            ),
            "spec.refreshBefore",
            "Too long",
        ),
        (
            invalid(
                "bounds",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "validation": {"failureThreshold": 0}}),
            ),
            "spec.validation.failureThreshold",
            "greater than or equal to 1",
        ),
        (
            invalid(
                "max-items",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "requiredPermissions": (0..65).map(|i| format!("p{i}")).collect::<Vec<_>>()}),
            ),
            "spec.requiredPermissions",
            "Too many",
        ),
        (
            invalid(
                "max-props",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "params": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            "spec.params",
            "Too many",
        ),
        (
            invalid(
                "cel",
                json!({"provider": "simpro", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "endpoint": "https://acme.simprosuite.com"}),
            ),
            "spec",
            "providers simpro and safetyculture accept only auth ApiKey",
        ),
        (
            invalid(
                "cel-field",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "endpoint": "http://example.com"}),
            ),
            "spec.endpoint",
            "endpoint must be an https:// URL",
        ),
        (
            invalid(
                "type",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "s"}, "validation": {"failureThreshold": "three"}}),
            ),
            "spec.validation.failureThreshold",
            "must be of type integer",
        ),
        (
            invalid(
                "min-length",
                json!({"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": ""}}),
            ),
            "spec.secretRef.name",
            "should be at least 1 chars long",
        ),
    ];
    for (object, field, message) in cases {
        let name = object.metadata.name.clone().unwrap();
        let err = status(api.create(&PostParams::default(), &object).await);
        assert_eq!(
            (err.code, err.reason.as_str()),
            (422, "Invalid"),
            "{name}: {}",
            err.message
        );
        let causes = err
            .details
            .as_ref()
            .map(|d| d.causes.clone())
            .unwrap_or_default();
        assert!(
            causes
                .iter()
                .any(|c| c.field == field && c.message.contains(message)),
            "{name}: no cause at {field} containing {message:?}: {causes:?}"
        );
    }
    // Object metadata is validated too.
    let mut bad_label = credential("bad-label");
    bad_label.metadata.labels =
        Some([("team".to_string(), "not a valid value!".to_string())].into());
    let err = status(api.create(&PostParams::default(), &bad_label).await);
    assert_eq!(err.code, 422);
    assert!(
        err.details
            .unwrap()
            .causes
            .iter()
            .any(|c| c.field.starts_with("metadata.labels"))
    );
    // Unknown fields are pruned and defaults applied.
    let mut ok = credential("ok");
    ok.data["spec"]["unknownField"] = json!(true);
    let created = api.create(&PostParams::default(), &ok).await.unwrap();
    assert!(created.data["spec"].get("unknownField").is_none());
    assert_eq!(created.data["spec"]["permissionPolicy"], "Superset");
    assert_eq!(created.data["spec"]["validation"]["interval"], "15m");
    // list-type=map items must be unique by key.
    let condition = json!({"type": "Ready", "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"});
    let err = status(
        api.patch_status(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [condition.clone(), condition]}})),
        )
        .await,
    );
    assert_eq!(err.code, 422);
    assert!(
        err.details
            .unwrap()
            .causes
            .iter()
            .any(|c| c.field == "status.conditions[1]")
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let mut cc = credential("fin");
    cc.metadata.finalizers = Some(vec!["reconnect.dev/test".into()]);
    let created = api.create(&PostParams::default(), &cc).await.unwrap();
    let stream = api
        .watch(&WatchParams::default(), &rv(&created))
        .await
        .unwrap();
    let answer = api.delete("fin", &DeleteParams::default()).await.unwrap();
    let held = api.get("fin").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // The delete answers with the object it kept; marking it bumps the generation.
    let marked = answer.left().expect("the object, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        (created.metadata.generation, held.metadata.generation),
        (Some(1), Some(2))
    );
    // No new finalizers while deleting.
    let err = status(
        api.patch(
            "fin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["reconnect.dev/test", "other/x"]}})),
        )
        .await,
    );
    assert_eq!(err.code, 422);
    api.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let events = watch_until(stream, |seen| {
        seen.iter().any(|e| matches!(e, WatchEvent::Deleted(_)))
    })
    .await;
    assert!(matches!(events.last(), Some(WatchEvent::Deleted(_))));
    assert!(status(api.get("fin").await).is_not_found());
    cluster.cleanup().await;
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents_unless_orphaned() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let owned_secret = |name: &str, owner: &DynamicObject| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "name": owner.metadata.name, "uid": owner.metadata.uid,
        }]}}))
        .unwrap()
    };
    let owner = api
        .create(&PostParams::default(), &credential("owner"))
        .await
        .unwrap();
    let dependent = secrets(&cluster)
        .create(&PostParams::default(), &owned_secret("owned", &owner))
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let uid = dependent.metadata.uid.unwrap();
    let gone = await_condition(secrets(&cluster), "owned", conditions::is_deleted(&uid));
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("dependent collected")
        .unwrap();

    let keeper = api
        .create(&PostParams::default(), &credential("keeper"))
        .await
        .unwrap();
    secrets(&cluster)
        .create(&PostParams::default(), &owned_secret("kept", &keeper))
        .await
        .unwrap();
    api.delete(
        "keeper",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let orphaned = await_condition(secrets(&cluster), "kept", |s: Option<&Secret>| {
        s.is_some_and(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
        })
    });
    tokio::time::timeout(WAIT, orphaned)
        .await
        .expect("dependent orphaned")
        .unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn delete_preconditions_are_enforced() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("pre", json!({})))
        .await
        .unwrap();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let err = status(api.delete("pre", &params).await);
    assert_eq!(err.code, 409);
    assert!(api.get("pre").await.is_ok());
    cluster.cleanup().await;
}

#[tokio::test]
async fn errors_are_status_objects_with_real_codes() {
    let cluster = test_cluster().await;
    let err = status(secrets(&cluster).get("missing").await);
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        err.details.as_ref().map(|d| d.name.as_str()),
        Some("missing")
    );
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{}/secrets/named",
        cluster.namespace
    ))
    .body(b"{}".to_vec())
    .unwrap();
    let err = status(raw(&cluster, request).await);
    assert_eq!((err.code, err.reason.as_str()), (405, "MethodNotAllowed"));
    let request = http::Request::post(format!("/api/v1/namespaces/{}/secrets", cluster.namespace))
        .body(b"{not json".to_vec())
        .unwrap();
    let err = status(raw(&cluster, request).await);
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    cluster.cleanup().await;
}

#[tokio::test]
async fn events_leases_and_workloads_are_served() {
    let cluster = test_cluster().await;
    let events: Api<K8sEvent> = Api::default_namespaced(cluster.client.clone());
    let event: K8sEvent = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "reconnect.dev/test",
        "reportingInstance": "t", "action": "Test", "reason": "Tested", "type": "Normal", "note": "hello",
        "regarding": {"kind": "Secret", "name": "x", "namespace": cluster.namespace},
    }))
    .unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    assert_eq!(
        events.get("e1").await.unwrap().note.as_deref(),
        Some("hello")
    );
    let leases: Api<Lease> = Api::default_namespaced(cluster.client.clone());
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    // The create (no fieldManager, no User-Agent) owns spec.holderIdentity as "unknown": an
    // apply that changes it conflicts, as on kube-apiserver, until it forces.
    let take_over = Patch::Apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"holderIdentity": "b"}}),
    );
    let err = status(
        leases
            .patch("leader", &PatchParams::apply("a"), &take_over)
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"unknown\" using coordination.k8s.io/v1: .spec.holderIdentity"
    );
    // Applying the value it already has is shared ownership, not a conflict.
    leases
        .patch("leader", &PatchParams::apply("a"), &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"leaseDurationSeconds": 15}})))
        .await
        .unwrap();
    let renewed = leases
        .patch("leader", &PatchParams::apply("a").force(), &take_over)
        .await
        .unwrap();
    assert_eq!(renewed.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // Once forced, the field is the applier's: its next apply needs no force.
    let take_over = Patch::Apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"holderIdentity": "c"}}),
    );
    leases
        .patch("leader", &PatchParams::apply("a"), &take_over)
        .await
        .unwrap();
    // A merge patch by another writer takes it over again, without conflict.
    leases
        .patch(
            "leader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "d"}})),
        )
        .await
        .unwrap();
    let err = status(
        leases
            .patch("leader", &PatchParams::apply("a"), &take_over)
            .await,
    );
    assert_eq!(err.code, 409);
    for path in [
        "/apis/apps/v1",
        "/apis/coordination.k8s.io/v1",
        "/apis/events.k8s.io/v1",
        "/apis/reconnect.dev/v1alpha1",
    ] {
        let doc = raw(&cluster, http::Request::get(path).body(Vec::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(doc["kind"], "APIResourceList", "{path}");
    }
    let apps = raw(
        &cluster,
        http::Request::get("/apis/apps/v1")
            .body(Vec::new())
            .unwrap(),
    )
    .await
    .unwrap();
    let served: Vec<&str> = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        ["deployments", "statefulsets", "daemonsets"]
            .iter()
            .all(|r| served.contains(r)),
        "{served:?}"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn custom_resource_definitions_can_be_created_through_the_api() {
    let cluster = test_cluster().await;
    // Unique per test run so parallel runs against one real cluster do not collide.
    let suffix = cluster.namespace.replace('-', "");
    let plural = format!("widgets{suffix}");
    let kind = format!("Widget{suffix}");
    let group = "test.reconnect.dev";
    let name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": format!("widget{suffix}"), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer", "maximum": 10}}}}}}}]},
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    // The repo's CRDs are installed as objects too.
    let ours = crds
        .get("connectorcredentials.reconnect.dev")
        .await
        .unwrap();
    assert!(conditions::is_crd_established().matches_object(Some(&ours)));
    let crd_uid = crds
        .create(&PostParams::default(), &crd)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .expect("established")
    .unwrap();
    let resource = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.clone(),
        plural: plural.clone(),
    };
    let widgets: Api<DynamicObject> =
        Api::default_namespaced_with(cluster.client.clone(), &resource);
    let widget: DynamicObject = serde_json::from_value(json!({"apiVersion": format!("{group}/v1"), "kind": kind, "metadata": {"name": "w"}, "spec": {"size": 3}})).unwrap();
    // A freshly established CRD can take a moment to be served on a real cluster.
    let created = tokio::time::timeout(WAIT, async {
        loop {
            match widgets.create(&PostParams::default(), &widget).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => break other,
            }
        }
    })
    .await
    .expect("widget created")
    .unwrap();
    assert_eq!(created.data["spec"]["size"], 3);
    let mut too_big = widget.clone();
    too_big.metadata.name = Some("big".into());
    too_big.data["spec"]["size"] = json!(11);
    assert_eq!(
        status(widgets.create(&PostParams::default(), &too_big).await).code,
        422
    );
    // Deleting the CRD takes its objects and its endpoint away.
    crds.delete(&name, &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), &name, conditions::is_deleted(&crd_uid)),
    )
    .await
    .expect("CRD gone")
    .unwrap();
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            match widgets.get("w").await {
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "widgets still served after the CRD was deleted"
    );
    cluster.cleanup().await;
}

/// An object stored under an older, looser schema keeps working under a stricter one:
/// kube-apiserver defaults what it reads from storage, and validation ratcheting lets an
/// update keep values the new schema would refuse, so status writes (which never change the
/// spec) are admitted and keep the generation. Only a change to a refused value is refused.
/// (The stand-in defaults the stored object for updates only, not on reads.)
#[tokio::test]
async fn status_writes_to_an_object_an_older_schema_let_in_are_admitted() {
    let cluster = test_cluster().await;
    let suffix = cluster.namespace.replace('-', "");
    let plural = format!("gadgets{suffix}");
    let kind = format!("Gadget{suffix}");
    let group = "test.reconnect.dev";
    let name = format!("{plural}.{group}");
    let schema = |spec: Value| {
        json!({"type": "object", "properties": {
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }})
    };
    let crd = |spec: Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": plural, "singular": format!("gadget{suffix}"), "kind": kind, "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}}, "schema": {"openAPIV3Schema": schema(spec)}}]},
        }))
        .unwrap()
    };
    let loose = crd(json!({"type": "object", "properties": {
        "size": {"type": "integer"}, "unit": {"type": "string"},
    }}));
    let strict = crd(json!({"type": "object",
        "x-kubernetes-validations": [{"rule": "self.size <= 20", "message": "size must be at most 20"}],
        "properties": {
            "size": {"type": "integer", "maximum": 10},
            "unit": {"type": "string", "pattern": "^[a-z]+$"},
            "mode": {"type": "string", "default": "fast"},
        },
    }));
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    crds.create(&PostParams::default(), &loose).await.unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .expect("established")
    .unwrap();
    let resource = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.clone(),
        plural: plural.clone(),
    };
    let gadgets: Api<DynamicObject> =
        Api::default_namespaced_with(cluster.client.clone(), &resource);
    let gadget = |name: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": format!("{group}/v1"), "kind": kind,
            "metadata": {"name": name}, "spec": {"size": 50, "unit": "Metres"}}))
        .unwrap()
    };
    // A freshly established CRD can take a moment to be served on a real cluster.
    tokio::time::timeout(WAIT, async {
        loop {
            match gadgets.create(&PostParams::default(), &gadget("old")).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => break other,
            }
        }
    })
    .await
    .expect("gadget created")
    .unwrap();

    let mut current = crds.get(&name).await.unwrap();
    current.spec = strict.spec.clone();
    crds.replace(&name, &PostParams::default(), &current)
        .await
        .unwrap();
    // The stricter schema is in force once a new object like the old one is refused.
    tokio::time::timeout(WAIT, async {
        loop {
            match gadgets.create(&PostParams::default(), &gadget("new")).await {
                Err(kube::Error::Api(s)) if s.code == 422 => break,
                Ok(_) => {
                    let _ = gadgets.delete("new", &DeleteParams::default()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the stricter schema took effect");

    let written = gadgets
        .patch_status(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"seen": true}})),
        )
        .await
        .expect("a status write to an object the old schema let in is admitted");
    assert_eq!(written.data["status"]["seen"], true);
    assert_eq!(
        written.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    assert_eq!(written.data["spec"]["size"], 50);
    assert_eq!(
        written.data["spec"]["mode"], "fast",
        "the update sees the new default"
    );
    // Changing a refused value is judged by the new schema.
    let change = gadgets
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 60}})),
        )
        .await;
    assert_eq!(status(change).code, 422);
    crds.delete(&name, &DeleteParams::default()).await.unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn request_log_shows_no_writes_while_only_reading() {
    let cluster = test_cluster().await;
    let Some(standin) = cluster.standin_or_skip("request_log_shows_no_writes_while_only_reading")
    else {
        return;
    };
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("log", json!({})))
        .await
        .unwrap();
    api.patch(
        "log",
        &PatchParams::apply("logger"),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "log", "labels": {"a": "b"}}}),
        ),
    )
    .await
    .unwrap();
    let log = standin.requests();
    let apply = log
        .iter()
        .find(|r| r.verb == Verb::Patch)
        .expect("patch logged");
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(apply.path.contains("/secrets/log") && apply.path.contains("fieldManager=logger"));
    standin.clear_requests();
    api.get("log").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    let log = standin.requests();
    assert_eq!(
        log.iter().map(|r| r.verb).collect::<Vec<_>>(),
        vec![Verb::Get, Verb::List]
    );
    assert!(log.iter().all(|r| !r.verb.is_write()));
    cluster.cleanup().await;
}

#[tokio::test]
async fn injected_failures_and_latency_apply_to_matching_requests() {
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("injected_failures_and_latency_apply_to_matching_requests")
    else {
        return;
    };
    let api = secrets(&cluster);
    api.create(&PostParams::default(), &secret("f", json!({})))
        .await
        .unwrap();
    standin.fail_next(
        2,
        RequestMatch::any()
            .method(http::Method::GET)
            .path_regex(r"/secrets/f$"),
        500,
    );
    for _ in 0..2 {
        let err = status(api.get("f").await);
        assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    }
    assert!(api.get("f").await.is_ok());
    standin.fail_next(1, RequestMatch::any().verb(Verb::Update), 409);
    let current = api.get("f").await.unwrap();
    assert_eq!(
        status(api.replace("f", &PostParams::default(), &current).await).reason,
        "Conflict"
    );
    standin.add_latency(
        RequestMatch::any().path_contains("/secrets/f"),
        Duration::from_millis(200),
    );
    let started = std::time::Instant::now();
    api.get("f").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    cluster.cleanup().await;
}

#[tokio::test]
async fn closing_watches_ends_open_streams() {
    let cluster = test_cluster().await;
    let Some(standin) = cluster.standin_or_skip("closing_watches_ends_open_streams") else {
        return;
    };
    let api = secrets(&cluster);
    let stream = api.watch(&WatchParams::default(), "0").await.unwrap();
    assert_eq!(standin.open_watches(), 1);
    standin.close_watches();
    let ended = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>()).await;
    assert!(ended.expect("stream ended").is_ok());
    assert_eq!(standin.open_watches(), 0);
    cluster.cleanup().await;
}

#[tokio::test]
async fn served_over_http_for_kubeconfig_clients_and_kubectl() {
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("served_over_http_for_kubeconfig_clients_and_kubectl")
    else {
        return;
    };
    let served = standin.serve().await.unwrap();
    credentials(&cluster)
        .create(&PostParams::default(), &credential("via-http"))
        .await
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(served.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConnectorCredential> = Api::namespaced(client, &cluster.namespace);
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        vec!["via-http"]
    );
    // Watches stream over HTTP too.
    let stream = api.watch(&WatchParams::default(), "0").await.unwrap();
    let events = watch_until(stream, |seen| !seen.is_empty()).await;
    assert_eq!(
        event_names(&events),
        vec![("ADDED".into(), "via-http".into())]
    );

    if std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        println!(
            "skipping the kubectl part of served_over_http_for_kubeconfig_clients_and_kubectl: kubectl is not installed"
        );
        cluster.cleanup().await;
        return;
    }
    let kubeconfig = served.kubeconfig().to_path_buf();
    let kubectl = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        // kubectl blocks; keep the runtime free to serve its requests.
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new("kubectl")
                .args(&args)
                .arg("--request-timeout=20s")
                .env("KUBECONFIG", kubeconfig)
                .output()
                .expect("kubectl runs");
            assert!(
                output.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ns = cluster.namespace.as_str();
    let out = kubectl(args(&[
        "get",
        "connectorcredentials",
        "-n",
        ns,
        "-o",
        "name",
    ]))
    .await
    .unwrap();
    assert_eq!(out.trim(), "connectorcredential.reconnect.dev/via-http");
    // The CRD's printer columns, through a server-side Table.
    let out = kubectl(args(&["get", "ccred", "-n", ns])).await.unwrap();
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "PROVIDER", "ACCOUNT", "STATUS", "EXPIRES", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["via-http", "procore"], "{out}");
    let out = kubectl(args(&[
        "get",
        "namespace",
        ns,
        "-o",
        "jsonpath={.status.phase}",
    ]))
    .await
    .unwrap();
    assert_eq!(out, "Active");
    let out = kubectl(args(&[
        "get",
        "secrets,leases,deployments",
        "-n",
        ns,
        "-o",
        "name",
    ]))
    .await
    .unwrap();
    assert_eq!(out, "", "nothing of these kinds exists in the namespace");
    let out = kubectl(args(&["get", "--raw", "/apis"])).await.unwrap();
    assert!(out.contains("reconnect.dev"));
    // kubectl apply validates through the OpenAPI v3 documents (server-side, with
    // fieldValidation=Strict), client-side and server-side apply alike; no --validate=false.
    let manifest = reconnect_apiserver::scratch_dir()
        .unwrap()
        .join(format!("{ns}-secret.yaml"));
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\nstringData:\n  k: v\n",
    )
    .unwrap();
    let path = manifest.to_string_lossy().to_string();
    kubectl(args(&["apply", "--server-side", "-n", ns, "-f", &path]))
        .await
        .unwrap();
    let bogus = reconnect_apiserver::scratch_dir()
        .unwrap()
        .join(format!("{ns}-bogus.yaml"));
    std::fs::write(
        &bogus,
        "apiVersion: reconnect.dev/v1alpha1\nkind: ConnectorCredential\nmetadata:\n  name: bogus\nspec:\n  provider: procore\n  auth: ClientCredentials\n  secretRef: {name: s}\n  params: {companyId: \"1\"}\n  bogusField: 1\n",
    )
    .unwrap();
    let bogus_path = bogus.to_string_lossy().to_string();
    let refused = {
        let kubeconfig = kubeconfig.clone();
        let args = args(&["apply", "-n", ns, "-f", &bogus_path]);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", kubeconfig)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("strict decoding error: unknown field \"spec.bogusField\""),
        "{stderr}"
    );
    std::fs::write(
        &bogus,
        "apiVersion: reconnect.dev/v1alpha1\nkind: ConnectorCredential\nmetadata:\n  name: bogus\nspec:\n  provider: procore\n  auth: ClientCredentials\n  secretRef: {name: s}\n  params: {companyId: \"1\"}\n",
    )
    .unwrap();
    kubectl(args(&["apply", "-n", ns, "-f", &bogus_path]))
        .await
        .unwrap();
    // kubectl create sends protobuf for built-in types.
    let created_ns = format!("{ns}-k");
    kubectl(args(&["create", "namespace", &created_ns]))
        .await
        .unwrap();
    kubectl(args(&[
        "create",
        "secret",
        "generic",
        "made",
        "-n",
        ns,
        "--from-literal=k=w",
    ]))
    .await
    .unwrap();
    let made = Api::<Secret>::namespaced(cluster.client.clone(), ns)
        .get("made")
        .await
        .unwrap();
    assert_eq!(made.data.unwrap()["k"].0, b"w");
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    assert!(namespaces.get_opt(&created_ns).await.unwrap().is_some());
    let applied = Api::<Secret>::namespaced(cluster.client.clone(), ns)
        .get("applied")
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["k"].0, b"v");
    let kubectl_request = standin.requests().into_iter().find(|r| {
        r.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("kubectl"))
    });
    assert!(
        kubectl_request.is_some(),
        "the request log records kubectl's user agent"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let cluster = test_cluster().await;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    secrets(&cluster)
        .create(&PostParams::default(), &secret("inside", json!({})))
        .await
        .unwrap();
    let uid = namespaces
        .get(&cluster.namespace)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    namespaces
        .delete(&cluster.namespace, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(
            namespaces.clone(),
            &cluster.namespace,
            conditions::is_deleted(&uid),
        ),
    )
    .await
    .expect("namespace removed")
    .unwrap();
    assert!(status(secrets(&cluster).get("inside").await).is_not_found());
}

/// Streaming lists need a server with the WatchList feature (the stand-in has it).
#[tokio::test]
async fn streaming_lists_send_initial_events_then_a_bookmark() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    for name in ["s1", "s2"] {
        api.create(&PostParams::default(), &secret(name, json!({})))
            .await
            .unwrap();
    }
    let stream = watcher(api.clone(), watcher::Config::default().streaming_lists());
    let mut stream = std::pin::pin!(stream);
    let mut initial = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match stream
                .next()
                .await
                .expect("watcher runs")
                .expect("no watcher error")
            {
                watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await
    .expect("initial events end");
    initial.sort();
    assert_eq!(initial, vec!["s1", "s2"]);
    api.create(&PostParams::default(), &secret("s3", json!({})))
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, async {
        loop {
            if let watcher::Event::Apply(s) = stream
                .next()
                .await
                .expect("watcher runs")
                .expect("no watcher error")
            {
                break s.metadata.name.unwrap();
            }
        }
    })
    .await
    .expect("a later event");
    assert_eq!(next, "s3");
    cluster.cleanup().await;
}

#[tokio::test]
async fn workloads_keep_generation_across_status_writes() {
    let cluster = test_cluster().await;
    let template = |name: &str| {
        json!({"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]}}})
    };
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::default_namespaced(cluster.client.clone());
    let ds = serde_json::from_value(json!({"metadata": {"name": "ds"}, "spec": template("ds")}))
        .unwrap();
    assert_eq!(
        daemonsets
            .create(&PostParams::default(), &ds)
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1)
    );
    let status = json!({"status": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0}});
    let after_status = daemonsets
        .patch_status("ds", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    assert_eq!(after_status.metadata.generation, Some(1));
    let spec_change = json!({"spec": {"template": {"metadata": {"annotations": {"rolled": "1"}}}}});
    let rolled = daemonsets
        .patch("ds", &PatchParams::default(), &Patch::Merge(spec_change))
        .await
        .unwrap();
    assert_eq!(rolled.metadata.generation, Some(2));

    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::default_namespaced(cluster.client.clone());
    let mut spec = template("sts");
    spec["serviceName"] = json!("sts");
    spec["replicas"] = json!(0);
    let sts = serde_json::from_value(json!({"metadata": {"name": "sts"}, "spec": spec})).unwrap();
    statefulsets
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    let labelled = statefulsets
        .patch(
            "sts",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn kube_event_recorder_creates_then_patches_a_series() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let cluster = test_cluster().await;
    let cc = credentials(&cluster)
        .create(&PostParams::default(), &credential("evented"))
        .await
        .unwrap();
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("reconnect.dev/v1alpha1".into()),
        kind: Some("ConnectorCredential".into()),
        name: cc.metadata.name.clone(),
        namespace: Some(cluster.namespace.clone()),
        uid: cc.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        cluster.client.clone(),
        Reporter {
            controller: "reconnect-tests".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "RotationRejected".into(),
        note: Some("new account lacks documents.write".into()),
        action: "Rotate".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::default_namespaced(cluster.client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let ours: Vec<&K8sEvent> = listed
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_ref()) == cc.metadata.uid.as_ref())
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "a repeated event becomes a series, not a second object"
    );
    assert_eq!(ours[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(ours[0].reason.as_deref(), Some("RotationRejected"));
    cluster.cleanup().await;
}

#[tokio::test]
async fn orphan_and_foreground_deletes_answer_with_the_object_holding_a_gc_finalizer() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let owned_secret = |name: &str, owner: &DynamicObject| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": true,
        }]}}))
        .unwrap()
    };
    for (policy, finalizer) in [
        (PropagationPolicy::Orphan, "orphan"),
        (PropagationPolicy::Foreground, "foregroundDeletion"),
    ] {
        let name = finalizer.to_lowercase();
        let owner = api
            .create(&PostParams::default(), &credential(&name))
            .await
            .unwrap();
        let dependent = secrets(&cluster)
            .create(
                &PostParams::default(),
                &owned_secret(&format!("{name}-dep"), &owner),
            )
            .await
            .unwrap();
        let orphan = matches!(policy, PropagationPolicy::Orphan);
        let params = DeleteParams {
            propagation_policy: Some(policy),
            ..Default::default()
        };
        let answer = api.delete(&name, &params).await.unwrap();
        let marked = answer.left().expect("the object, not a Status");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(
            marked.metadata.finalizers.as_deref(),
            Some(&[finalizer.to_string()][..])
        );
        assert_eq!(marked.metadata.generation, Some(2));
        // Then the garbage collector finishes: the owner goes, the dependent loses its
        // reference (orphan) or goes first (foreground).
        let uid = owner.metadata.uid.clone().unwrap();
        tokio::time::timeout(
            WAIT,
            await_condition(api.clone(), &name, conditions::is_deleted(&uid)),
        )
        .await
        .expect("owner gone")
        .unwrap();
        let dependent_name = dependent.metadata.name.clone().unwrap();
        let left = secrets(&cluster).get_opt(&dependent_name).await.unwrap();
        if orphan {
            assert!(
                left.unwrap().metadata.owner_references.is_none(),
                "an orphaned dependent keeps no (empty) ownerReferences"
            );
        } else {
            assert!(
                left.is_none(),
                "foreground deletion removed the dependent first"
            );
        }
    }
    cluster.cleanup().await;
}

#[tokio::test]
async fn delete_collection_answers_with_the_deleted_objects() {
    let cluster = test_cluster().await;
    let api = secrets(&cluster);
    for name in ["dc1", "dc2", "keep"] {
        let group = if name == "keep" { "no" } else { "yes" };
        api.create(&PostParams::default(), &secret(name, json!({"dc": group})))
            .await
            .unwrap();
    }
    let answer = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("dc=yes"),
        )
        .await
        .unwrap();
    let deleted = answer.left().expect("a SecretList, not a Status");
    assert_eq!(names(&deleted.items), vec!["dc1", "dc2"]);
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        vec!["keep"]
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn namespaces_carry_their_name_label_and_the_kubernetes_finalizer() {
    let cluster = test_cluster().await;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let ns = namespaces.get(&cluster.namespace).await.unwrap();
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
        cluster.namespace
    );
    assert_eq!(
        ns.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );
    // The label cannot be changed: the server puts it back.
    let relabelled = namespaces
        .patch(
            &cluster.namespace,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"kubernetes.io/metadata.name": "other"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        relabelled.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        cluster.namespace
    );
    // Deleting answers with the namespace, now terminating.
    let other = format!("{}-del", cluster.namespace);
    let created: Namespace = serde_json::from_value(
        json!({"metadata": {"name": other, "labels": {"reconnect.dev/test-namespace": "true"}}}),
    )
    .unwrap();
    namespaces
        .create(&PostParams::default(), &created)
        .await
        .unwrap();
    let answer = namespaces
        .delete(&other, &DeleteParams::default())
        .await
        .unwrap();
    let terminating = answer.left().expect("the Namespace, not a Status");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(terminating.metadata.deletion_timestamp.is_some());
    cluster.cleanup().await;
}

#[tokio::test]
async fn custom_resources_refuse_updates_without_a_resource_version() {
    let cluster = test_cluster().await;
    let api = credentials(&cluster);
    let created = api
        .create(&PostParams::default(), &credential("unconditional"))
        .await
        .unwrap();
    for subresource in ["", "/status"] {
        let mut body = created.clone();
        body.metadata.resource_version = None;
        body.metadata.managed_fields = None;
        body.data["status"] = json!({"phase": "Connected"});
        let request = http::Request::put(format!(
            "/apis/reconnect.dev/v1alpha1/namespaces/{}/connectorcredentials/unconditional{subresource}",
            cluster.namespace
        ))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
        let err = status(raw(&cluster, request).await);
        assert_eq!(
            (err.code, err.reason.as_str()),
            (422, "Invalid"),
            "{subresource}"
        );
        assert!(
            err.message
                .starts_with("connectorcredentials.reconnect.dev \"unconditional\" is invalid"),
            "{}",
            err.message
        );
        let causes = err.details.unwrap().causes;
        assert_eq!(causes[0].field, "metadata.resourceVersion");
        assert!(
            causes[0]
                .message
                .contains("must be specified for an update")
        );
    }
    // Built-in types take unconditional updates.
    let api = secrets(&cluster);
    let mut first = api
        .create(&PostParams::default(), &secret("unconditional", json!({})))
        .await
        .unwrap();
    first.metadata.resource_version = None;
    first.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    let replaced = api
        .replace("unconditional", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.labels.unwrap()["v"], "2");
    cluster.cleanup().await;
}

#[tokio::test]
async fn empty_metadata_collections_are_dropped_and_typed_list_items_carry_no_kind() {
    let cluster = test_cluster().await;
    let body = json!({"metadata": {"name": "empty", "labels": {}, "annotations": {}, "finalizers": [],
        "ownerReferences": []}, "data": {}});
    let request = http::Request::post(format!("/api/v1/namespaces/{}/secrets", cluster.namespace))
        .header("Content-Type", "application/json")
        .body(body.to_string().into_bytes())
        .unwrap();
    let created = raw(&cluster, request).await.unwrap();
    for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
        assert!(
            created["metadata"].get(field).is_none(),
            "{field}: {created}"
        );
    }
    assert!(created.get("data").is_none(), "{created}");
    credentials(&cluster)
        .create(&PostParams::default(), &credential("kinded"))
        .await
        .unwrap();
    let list = |path: String| raw(&cluster, http::Request::get(path).body(Vec::new()).unwrap());
    // Built-in lists are typed: their items have no apiVersion/kind. Custom resources have.
    let secret_list = list(format!("/api/v1/namespaces/{}/secrets", cluster.namespace))
        .await
        .unwrap();
    assert_eq!(secret_list["kind"], "SecretList");
    assert!(
        secret_list["items"][0].get("kind").is_none(),
        "{secret_list}"
    );
    let cc_list = list(format!(
        "/apis/reconnect.dev/v1alpha1/namespaces/{}/connectorcredentials",
        cluster.namespace
    ))
    .await
    .unwrap();
    assert_eq!(cc_list["items"][0]["kind"], "ConnectorCredential");
    cluster.cleanup().await;
}

#[tokio::test]
async fn error_details_follow_kube_apiserver() {
    let cluster = test_cluster().await;
    let get = |path: String| raw(&cluster, http::Request::get(path).body(Vec::new()).unwrap());
    // Core-group details carry no empty group.
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/secrets/missing",
        cluster.namespace
    ))
    .body(Vec::new())
    .unwrap();
    let response = cluster
        .client
        .send(request.map(kube::client::Body::from))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let not_found: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        not_found["details"],
        json!({"name": "missing", "kind": "secrets"})
    );
    // A path naming no resource.
    let err = status(get(format!("/api/v1/namespaces/{}/nonsense", cluster.namespace)).await);
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "the server could not find the requested resource")
    );
    // resourceVersionMatch without a resourceVersion is an invalid ListOptions.
    let err = status(
        get(format!(
            "/api/v1/namespaces/{}/secrets?resourceVersionMatch=Exact",
            cluster.namespace
        ))
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(err.details.as_ref().unwrap().kind, "ListOptions");
    assert_eq!(err.details.unwrap().causes[0].field, "resourceVersionMatch");
    // A resourceVersion from the future times out.
    let err = status(
        get(format!(
            "/api/v1/namespaces/{}/secrets?resourceVersion=999999999999",
            cluster.namespace
        ))
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (504, "Timeout"));
    assert!(
        err.message
            .starts_with("Timeout: Too large resource version: 999999999999"),
        "{}",
        err.message
    );
    // Invalid names are explained with the rule.
    let err = status(
        secrets(&cluster)
            .create(&PostParams::default(), &secret("Not_Valid", json!({})))
            .await,
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("a lowercase RFC 1123 subdomain must consist of")
            && err.message.contains("regex used for validation is"),
        "{}",
        err.message
    );
    // A failed JSON patch test does not say which operation failed.
    secrets(&cluster)
        .create(&PostParams::default(), &secret("jp", json!({"a": "1"})))
        .await
        .unwrap();
    let request = http::Request::patch(format!(
        "/api/v1/namespaces/{}/secrets/jp",
        cluster.namespace
    ))
    .header("Content-Type", "application/json-patch+json")
    .body(
        json!([{"op": "test", "path": "/metadata/labels/a", "value": "2"}])
            .to_string()
            .into_bytes(),
    )
    .unwrap();
    let err = status(raw(&cluster, request).await);
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            422,
            "the server rejected our request due to an error in our request"
        )
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn strict_field_validation_refuses_unknown_fields_of_custom_resources() {
    let cluster = test_cluster().await;
    let mut body = serde_json::to_value(credential("strict")).unwrap();
    body["spec"]["bogusField"] = json!(1);
    let post = |query: &str| {
        http::Request::post(format!(
            "/apis/reconnect.dev/v1alpha1/namespaces/{}/connectorcredentials{query}",
            cluster.namespace
        ))
        .header("Content-Type", "application/json")
        .body(body.to_string().into_bytes())
        .unwrap()
    };
    let err = status(raw(&cluster, post("?fieldValidation=Strict")).await);
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    assert!(
        err.message
            .ends_with("strict decoding error: unknown field \"spec.bogusField\""),
        "{}",
        err.message
    );
    // Ignore prunes the field.
    let created = raw(&cluster, post("?fieldValidation=Ignore"))
        .await
        .unwrap();
    assert!(created["spec"].get("bogusField").is_none(), "{created}");
    cluster.cleanup().await;
}

/// One length-delimited protobuf field (lengths below 128).
fn proto_field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, u8::try_from(bytes.len()).unwrap()];
    out.extend_from_slice(bytes);
    out
}

#[tokio::test]
async fn built_in_objects_can_be_created_from_protobuf_as_kubectl_sends_them() {
    let cluster = test_cluster().await;
    // k8s\0 + runtime.Unknown{typeMeta{apiVersion, kind}, raw: Secret{metadata{name}, data}}.
    let type_meta = [proto_field(1, b"v1"), proto_field(2, b"Secret")].concat();
    let entry = [proto_field(1, b"k"), proto_field(2, b"from-protobuf")].concat();
    let secret = [
        proto_field(1, &proto_field(1, b"pb")),
        proto_field(2, &entry),
    ]
    .concat();
    let body = [
        b"k8s\0".to_vec(),
        proto_field(1, &type_meta),
        proto_field(2, &secret),
    ]
    .concat();
    let request = http::Request::post(format!("/api/v1/namespaces/{}/secrets", cluster.namespace))
        .header("Content-Type", "application/vnd.kubernetes.protobuf")
        .header("Accept", "application/json")
        .body(body)
        .unwrap();
    raw(&cluster, request).await.unwrap();
    let made = secrets(&cluster).get("pb").await.unwrap();
    assert_eq!(made.data.unwrap()["k"].0, b"from-protobuf");
    cluster.cleanup().await;
}

#[tokio::test]
async fn openapi_v3_documents_name_each_kind_and_its_patch_parameters() {
    let cluster = test_cluster().await;
    let get = |path: String| raw(&cluster, http::Request::get(path).body(Vec::new()).unwrap());
    let index = get("/openapi/v3".into()).await.unwrap();
    for gv in ["api/v1", "apis/reconnect.dev/v1alpha1"] {
        assert!(index["paths"].get(gv).is_some(), "{gv} in {index}");
    }
    let url = index["paths"]["apis/reconnect.dev/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = get(url).await.unwrap();
    // kubectl looks for the PATCH operation of the kind, and its fieldValidation parameter.
    let patch = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|p| p.get("patch"))
        .find(|op| op["x-kubernetes-group-version-kind"]["kind"] == "ConnectorCredential")
        .expect("a PATCH operation for ConnectorCredential");
    let params: Vec<&str> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(params.contains(&"fieldValidation"), "{params:?}");
    cluster.cleanup().await;
}
