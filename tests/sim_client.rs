//! The real client against the real simulator over HTTP on 127.0.0.1.

mod common;

use chrono::Utc;
use common::*;
use futures::TryStreamExt;
use kcr_housekeeper::kcr::signer::{self, CanonicalInput};
use kcr_housekeeper::kcr::*;
use kcr_housekeeper::sim::{FaultKind, Faults, GenerateSpec, SimOptions, WorldSource};
use secrecy::ExposeSecret;
use std::time::Duration;

fn generated(spec: &str) -> SimOptions {
    SimOptions {
        source: WorldSource::Generate(spec.parse::<GenerateSpec>().unwrap()),
        ..Default::default()
    }
}

async fn gen_instance(client: &Client) -> String {
    let all = client.list_all(DescribeInstance::default()).await.unwrap();
    all[0].instance_id.clone()
}

#[tokio::test]
async fn pagination_across_more_than_99_items_uses_minimal_calls() {
    let sim = sim(generated("namespaces=2,repos=1,images=250,seed=3")).await;
    let client = client_for(&sim);
    let id = gen_instance(&client).await;
    let images = client
        .list_all(DescribeImages::all(&id, "team0", "app0"))
        .await
        .unwrap();
    assert_eq!(images.len(), 250);
    let mut digests: Vec<_> = images.iter().map(|i| i.image_id.clone()).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 250, "no image listed twice across pages");
    // ceil(250 / 99) = 3 pages, each asking for 99.
    let calls: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("DescribeImages"))
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c.params.get("MaxResults").map(String::as_str) == Some("99"))
    );
    let markers: Vec<_> = calls.iter().map(|c| c.params["Marker"].clone()).collect();
    assert_eq!(markers, ["0", "99", "198"]);

    // Pages as a stream carry the totals.
    let pages: Vec<_> = client
        .pages(DescribeImages::all(&id, "team1", "app0"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        pages.iter().map(|p| p.items.len()).collect::<Vec<_>>(),
        [99, 99, 52]
    );
    assert!(pages.iter().all(|p| p.total == 250));
    assert_eq!(pages.last().unwrap().next_marker, 0);
}

#[tokio::test]
async fn empty_listing_is_one_call() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let repos = client
        .list_all(DescribeRepository::all(DEMO_INSTANCE, "scratch"))
        .await
        .unwrap();
    assert!(repos.is_empty());
    assert_eq!(sim.count("DescribeRepository"), 1);
}

#[tokio::test]
async fn listing_that_changes_size_midway_is_an_error_not_a_partial_list() {
    let sim = sim(generated("namespaces=1,repos=1,images=150,seed=4")).await;
    let client = client_for(&sim);
    let id = gen_instance(&client).await;
    let mut pages = Box::pin(client.pages(DescribeImages::all(&id, "team0", "app0")));
    let first = pages.try_next().await.unwrap().unwrap();
    assert_eq!(first.total, 150);
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .get_mut("team0")
            .unwrap()
            .repos
            .get_mut("app0")
            .unwrap()
            .images
            .pop()
    });
    let err = pages.try_next().await.unwrap_err();
    assert_eq!(err.code(), "ListingChanged");
    assert!(err.to_string().contains("DescribeImages"));
}

#[tokio::test]
async fn quirks_are_decoded_from_the_wire() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let ns = client
        .list_all(DescribeNamespace::all(DEMO_INSTANCE))
        .await
        .unwrap();
    let apps = ns.iter().find(|n| n.namespace == "apps").unwrap();
    assert_eq!(apps.repo_count, 3, "RepoCount arrives as a string");
    let tokens = client
        .list_all(DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap();
    let never = tokens
        .iter()
        .find(|t| t.token_id.starts_with("0b9d4e17"))
        .unwrap();
    assert_eq!(never.expire_time, None, "ExpireTime null = never expires");
    let anon = tokens
        .iter()
        .find(|t| t.token_id.starts_with("d2e7a9c4"))
        .unwrap();
    assert_eq!(anon.desc, None, "Desc null");
    let created = client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Hours(2),
            desc: Some("kcr-housekeeper/test/r1".into()),
        })
        .await
        .unwrap();
    assert!(!created.token_id.is_empty(), "tokenId in lower camel case");
    assert!(!created.request_id.is_empty(), "RequestId beside tokenId");
    let expires = created.expire_time.unwrap().to_utc(client.timezone());
    let delta = expires - Utc::now();
    assert!(
        (delta - chrono::Duration::hours(2)).num_seconds().abs() < 60,
        "Beijing time converted: {delta}"
    );
    let repos = client
        .list_all(DescribeRepository::all(DEMO_INSTANCE, "apps"))
        .await
        .unwrap();
    assert_eq!(
        repos.iter().find(|r| r.repo_name == "api").unwrap().desc,
        None
    );
    let images = client
        .list_all(DescribeImages::all(DEMO_INSTANCE, "apps", "web"))
        .await
        .unwrap();
    assert!(
        images.iter().any(|i| i.tag_names.is_empty()),
        "TagNames null for untagged images"
    );
}

#[tokio::test]
async fn retries_injected_409_and_5xx_until_success() {
    let faults = Faults {
        fault_rate: 0.4,
        seed: Some(11),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let mut cfg = config_for(&sim);
    cfg.retry.max_attempts = 12;
    let client = Client::new(cfg).unwrap();
    for _ in 0..20 {
        client
            .call(&DescribeInstanceUsage {
                instance_id: DEMO_INSTANCE.into(),
            })
            .await
            .unwrap();
    }
    let log = sim.requests();
    let injected = log.iter().filter(|e| e.injected).count();
    let codes: std::collections::BTreeSet<_> = log
        .iter()
        .filter(|e| e.injected)
        .map(|e| e.code.clone())
        .collect();
    assert!(injected > 0, "faults were injected");
    assert!(
        codes.contains("LimitExceeded") && codes.contains("ServiceUnavailable"),
        "{codes:?}"
    );
    assert_eq!(log.iter().filter(|e| e.code == "OK").count(), 20);
    assert_eq!(
        log.len(),
        20 + injected,
        "each fault was retried exactly once more"
    );
}

#[tokio::test]
async fn no_retry_on_403_or_400() {
    let sim = sim(SimOptions::default()).await;
    let mut cfg = config_for(&sim);
    cfg.credentials = Credentials::new(sim.credentials().access_key_id, "wrong-secret");
    let bad = Client::new(cfg).unwrap();
    let err = bad
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SignatureDoesNotMatch");
    assert_eq!(err.status(), Some(403));
    let msg = err.to_string();
    assert!(
        msg.contains("DescribeInstanceUsage") && msg.contains("403") && msg.contains("request id"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-secret"));
    assert_eq!(sim.requests().len(), 1, "403 is not retried");

    let client = client_for(&sim);
    let err = client
        .call(&DescribeInstanceUsage {
            instance_id: "no-such-instance".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue");
    assert_eq!(sim.requests().len(), 2, "400 is not retried");

    let mut cfg = config_for(&sim);
    cfg.credentials = Credentials::new("AKLTnobody", "x");
    let unknown = Client::new(cfg).unwrap();
    let err = unknown
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidClientTokenId");
}

#[tokio::test]
async fn create_token_is_never_blindly_retried_after_5xx() {
    let faults = Faults {
        fault_rate: 1.0,
        kinds: vec![FaultKind::ServerError],
        seed: Some(1),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let client = client_for(&sim);
    let err = client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Days(1),
            desc: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ServiceUnavailable");
    assert_eq!(
        sim.count("CreateInstanceToken"),
        1,
        "an ambiguous failure is not repeated"
    );
    // A read under the same faults is retried up to the attempt limit.
    let _ = client
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(sim.count("DescribeInstanceUsage"), 5);
}

#[tokio::test]
async fn create_token_is_retried_after_409_which_proves_it_was_not_applied() {
    let faults = Faults {
        fault_rate: 0.5,
        kinds: vec![FaultKind::LimitExceeded],
        seed: Some(5),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let mut cfg = config_for(&sim);
    cfg.retry.max_attempts = 20;
    let client = Client::new(cfg).unwrap();
    for _ in 0..5 {
        client
            .call(&CreateInstanceToken {
                instance_id: DEMO_INSTANCE.into(),
                lifetime: TokenLifetime::Days(1),
                desc: None,
            })
            .await
            .unwrap();
    }
    let tokens = sim.world(|w| w.instances[0].tokens.len());
    assert_eq!(tokens, 4 + 5, "exactly one token per successful call");
    assert!(sim.requests().iter().any(|e| e.injected));
}

#[tokio::test]
async fn rate_limit_ceiling_is_respected_on_the_wire() {
    let sim = sim(SimOptions::default()).await;
    let mut cfg = config_for(&sim);
    cfg.requests_per_second = 20.0;
    let client = Client::new(cfg).unwrap();
    let usage = DescribeInstanceUsage {
        instance_id: DEMO_INSTANCE.into(),
    };
    let calls = (0..50).map(|_| client.call(&usage));
    futures::future::try_join_all(calls).await.unwrap();
    let times: Vec<chrono::DateTime<Utc>> = sim
        .requests()
        .iter()
        .map(|e| {
            chrono::DateTime::parse_from_rfc3339(&e.ts)
                .unwrap()
                .with_timezone(&Utc)
        })
        .collect();
    assert_eq!(times.len(), 50);
    // Any one-second window holds at most ceiling + 1 requests (evenly spaced slots).
    let worst = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t < *start + chrono::Duration::seconds(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        worst <= 21,
        "{worst} requests in one second at a ceiling of 20/s"
    );
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        span >= chrono::Duration::milliseconds(2300),
        "50 requests at 20/s take ~2.45 s, took {span}"
    );
}

#[tokio::test]
async fn limit_exceeded_from_the_server_halves_the_client_rate() {
    let faults = Faults {
        rate_limit: Some(5),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let mut cfg = config_for(&sim);
    cfg.requests_per_second = 40.0;
    cfg.retry.max_attempts = 30;
    cfg.retry.cap = Duration::from_millis(200);
    let client = Client::new(cfg).unwrap();
    for _ in 0..12 {
        client
            .call(&DescribeInstanceUsage {
                instance_id: DEMO_INSTANCE.into(),
            })
            .await
            .unwrap();
    }
    assert!(sim.requests().iter().any(|e| e.code == "LimitExceeded"));
    assert!(
        client.current_rate() < 40.0,
        "rate cut after LimitExceeded: {}",
        client.current_rate()
    );
}

/// Send a request signed by hand, for the negative cases.
async fn raw_send(
    endpoint: &str,
    creds: &Credentials,
    time: chrono::DateTime<Utc>,
    signed_body: &str,
    sent_body: &str,
) -> (u16, serde_json::Value) {
    let url = reqwest::Url::parse(endpoint).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let amz_date = time.format(signer::AMZ_DATE_FORMAT).to_string();
    let ct = "application/x-www-form-urlencoded";
    let hash = signer::sha256_hex(signed_body.as_bytes());
    let headers = [
        ("content-type", ct),
        ("host", host.as_str()),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-content-sha256", hash.as_str()),
    ];
    let auth = signer::authorization(
        &creds.access_key_id,
        creds.secret_access_key.expose_secret(),
        "cn-beijing-6",
        "kcrs",
        time,
        &CanonicalInput {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        },
    );
    let resp = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", ct)
        .header("x-amz-date", amz_date)
        .header("x-amz-content-sha256", hash)
        .header("authorization", auth)
        .body(sent_body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn tampered_body_and_expired_date_are_refused() {
    let sim = sim(SimOptions::default()).await;
    let creds = sim.credentials();
    let body = format!(
        "Action=ModifyNamespaceType&Version=2021-11-09&InstanceId={DEMO_INSTANCE}&Namespace=apps&Public=False"
    );
    let (status, v) = raw_send(&sim.endpoint(), &creds, Utc::now(), &body, &body).await;
    assert_eq!(status, 200, "{v}");

    let tampered = body.replace("Public=False", "Public=True");
    let (status, v) = raw_send(&sim.endpoint(), &creds, Utc::now(), &body, &tampered).await;
    assert_eq!(status, 403);
    assert_eq!(v["Error"]["Code"], "SignatureDoesNotMatch");
    assert!(
        !sim.world(|w| w.instances[0].namespaces["apps"].public),
        "the tampered change was not applied"
    );

    let old = Utc::now() - chrono::Duration::minutes(20);
    let (status, v) = raw_send(&sim.endpoint(), &creds, old, &body, &body).await;
    assert_eq!(status, 403);
    assert_eq!(v["Error"]["Code"], "SignatureDoesNotMatch");
    assert!(
        v["Error"]["Message"]
            .as_str()
            .unwrap()
            .starts_with("Signature expired"),
        "{v}"
    );
    assert!(v["RequestId"].as_str().is_some_and(|r| !r.is_empty()));
}

#[tokio::test]
async fn unsigned_and_malformed_requests_get_the_reference_codes() {
    let sim = sim(SimOptions::default()).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!(
            "{}/?Action=DescribeInstance&Version=2021-11-09",
            sim.endpoint()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["Error"]["Code"], "MissingAuthenticationToken");
    let r = http
        .get(sim.endpoint())
        .header("authorization", "AWS4-HMAC-SHA256 Credential=a/b/c")
        .header("x-amz-date", "20260101T000000Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["Error"]["Code"], "IncompleteSignature");
}

#[tokio::test]
async fn parameter_validation() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let bad_page = DescribeNamespace {
        max_results: Some(100),
        ..DescribeNamespace::all(DEMO_INSTANCE)
    };
    let err = client.call(&bad_page).await.unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue");
    assert!(err.to_string().contains("MaxResults"));
    let err = client
        .call(&CreateNamespace {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "9lives".into(),
            public: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue");
    let err = client
        .call(&CreateNamespace {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "Upper".into(),
            public: false,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Namespace"));
    let err = client
        .call(&CreateInstance {
            instance_name: "x".into(),
            instance_type: "basic".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InstanceName"));
    let err = client
        .call(&CreateInstance {
            instance_name: "okname".into(),
            instance_type: "".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "MissingParameter");
}

#[tokio::test]
async fn state_transitions_follow_the_reference() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let id = DEMO_INSTANCE.to_owned();
    let images = |c: Client| async move {
        c.list_all(DescribeImages::all(DEMO_INSTANCE, "apps", "web"))
            .await
            .unwrap()
    };

    // DeleteRepoTag removes one tag; the image stays.
    let before = images(client.clone()).await;
    client
        .call(&DeleteRepoTag {
            instance_id: id.clone(),
            namespace: "apps".into(),
            repo_name: "web".into(),
            tag_name: "pr-101".into(),
        })
        .await
        .unwrap();
    let after = images(client.clone()).await;
    assert_eq!(after.len(), before.len(), "the image stays");
    let img = after.iter().find(|i| i.image_id.ends_with("107")).unwrap();
    assert!(img.tag_names.is_empty(), "untagged after its last tag went");

    // DeleteImages removes the image and every tag on it.
    let digest = after
        .iter()
        .find(|i| i.tag_names.contains(&"v1.4.1".to_string()))
        .unwrap()
        .image_id
        .clone();
    client
        .call(&DeleteImages {
            instance_id: id.clone(),
            namespace: "apps".into(),
            repo_name: "web".into(),
            image_id: digest.clone(),
        })
        .await
        .unwrap();
    let after = images(client.clone()).await;
    assert_eq!(after.len(), before.len() - 1);
    assert!(
        !after
            .iter()
            .any(|i| i.tag_names.iter().any(|t| t == "pr-102" || t == "v1.4.1"))
    );
    // Deleting it again: the API says it is not there.
    let err = client
        .call(&DeleteImages {
            instance_id: id.clone(),
            namespace: "apps".into(),
            repo_name: "web".into(),
            image_id: digest,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue");

    // A namespace with repositories cannot be deleted; an empty one can.
    let err = client
        .call(&DeleteNamespace {
            instance_id: id.clone(),
            namespace: "apps".into(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repositories"), "{err}");
    let usage0 = client
        .call(&DescribeInstanceUsage {
            instance_id: id.clone(),
        })
        .await
        .unwrap();
    client
        .call(&DeleteNamespace {
            instance_id: id.clone(),
            namespace: "scratch".into(),
        })
        .await
        .unwrap();
    client
        .call(&CreateNamespace {
            instance_id: id.clone(),
            namespace: "fresh1".into(),
            public: true,
        })
        .await
        .unwrap();
    client
        .call(&CreateNamespace {
            instance_id: id.clone(),
            namespace: "fresh2".into(),
            public: false,
        })
        .await
        .unwrap();
    client
        .call(&DeleteRepository {
            instance_id: id.clone(),
            namespace: "sandbox".into(),
            repo_name: "experiment".into(),
        })
        .await
        .unwrap();
    // Usage is derived from state.
    let usage = client
        .call(&DescribeInstanceUsage {
            instance_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(usage.namespace_usage, usage0.namespace_usage + 1);
    assert_eq!(usage.repo_usage, usage0.repo_usage - 1);
    let exist = client
        .call(&DescribeNamespaceExist {
            instance_id: id.clone(),
            namespace: "fresh1".into(),
        })
        .await
        .unwrap();
    assert!(exist.exist);
    // Namespace visibility change is visible in the listing.
    client
        .call(&ModifyNamespaceType {
            instance_id: id.clone(),
            namespace: "sandbox".into(),
            public: false,
        })
        .await
        .unwrap();
    let ns = client.list_all(DescribeNamespace::all(&id)).await.unwrap();
    assert!(!ns.iter().find(|n| n.namespace == "sandbox").unwrap().public);
    // Quota: the demo instance allows 10 namespaces.
    for n in 0..10 {
        let _ = client
            .call(&CreateNamespace {
                instance_id: id.clone(),
                namespace: format!("q{n}x"),
                public: false,
            })
            .await;
    }
    let usage = client
        .call(&DescribeInstanceUsage {
            instance_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(usage.namespace_usage, usage.namespace_quota);
}

#[tokio::test]
async fn registry_login_accepts_live_tokens_only() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let created = demo_hour_token(&client).await;
    let http = reqwest::Client::new();
    let v2 = format!("{}/v2/", sim.endpoint());
    let login = |user: String, pass: String| {
        let http = http.clone();
        let v2 = v2.clone();
        async move {
            http.get(&v2)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let user = created.username.clone();
    let secret = created.token.expose_secret().to_owned();
    assert_eq!(login(user.clone(), secret.clone()).await, 200);
    assert_eq!(login(user.clone(), "wrong".into()).await, 401);
    assert_eq!(http.get(&v2).send().await.unwrap().status().as_u16(), 401);
    client
        .call(&ModifyInstanceTokenStatus {
            instance_id: DEMO_INSTANCE.into(),
            token_id: created.token_id.clone(),
            enable: false,
        })
        .await
        .unwrap();
    assert_eq!(
        login(user.clone(), secret.clone()).await,
        401,
        "disabled token"
    );
    client
        .call(&ModifyInstanceTokenStatus {
            instance_id: DEMO_INSTANCE.into(),
            token_id: created.token_id.clone(),
            enable: true,
        })
        .await
        .unwrap();
    assert_eq!(login(user.clone(), secret.clone()).await, 200);
    sim.advance(chrono::Duration::hours(2));
    assert_eq!(
        login(user.clone(), secret.clone()).await,
        401,
        "expired token"
    );
    sim.advance(chrono::Duration::hours(-2));
    client
        .call(&DeleteInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            token_id: created.token_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(login(user, secret).await, 401, "deleted token");
}

#[tokio::test]
async fn token_listing_lag_is_simulated() {
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| w.token_list_delay = chrono::Duration::seconds(30));
    let client = client_for(&sim);
    let list = || DescribeInstanceToken {
        instance_id: DEMO_INSTANCE.into(),
        marker: None,
        max_results: None,
    };
    let before = client.list_all(list()).await.unwrap().len();
    client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Days(1),
            desc: None,
        })
        .await
        .unwrap();
    assert_eq!(
        client.list_all(list()).await.unwrap().len(),
        before,
        "not listed yet"
    );
    sim.advance(chrono::Duration::seconds(31));
    assert_eq!(client.list_all(list()).await.unwrap().len(), before + 1);
}

#[tokio::test]
async fn request_log_is_written_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let sim = sim(SimOptions {
        request_log: Some(path.clone()),
        ..Default::default()
    })
    .await;
    let client = client_for(&sim);
    client
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap();
    client
        .list_all(DescribeNamespace::all(DEMO_INSTANCE))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let entries: Vec<kcr_housekeeper::sim::LogEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].action.as_deref(), Some("DescribeInstanceUsage"));
    assert_eq!(entries[0].method, "GET");
    assert_eq!(
        entries[1].params.get("MaxResults").map(String::as_str),
        Some("99")
    );
    assert_eq!(entries, sim.requests());
}

#[tokio::test]
async fn mutations_are_posted_reads_are_got() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    client
        .call(&DescribeNamespaceExist {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "apps".into(),
        })
        .await
        .unwrap();
    client
        .call(&ModifyNamespaceType {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "apps".into(),
            public: false,
        })
        .await
        .unwrap();
    let log = sim.requests();
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[1].method, "POST");
    assert_eq!(
        log[1].params.get("Public").map(String::as_str),
        Some("False")
    );
}

#[tokio::test]
async fn timeouts_are_typed_and_retried() {
    let faults = Faults {
        latency: Duration::from_millis(300),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let mut cfg = config_for(&sim);
    cfg.timeout = Duration::from_millis(100);
    cfg.retry.max_attempts = 2;
    let client = Client::new(cfg).unwrap();
    let err = client
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "Timeout");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sim.count("DescribeInstanceUsage"), 2);
}

/// Step 9: a sub-user's key scoped by IAM to one namespace reads there and is
/// answered 403 `AccessDenied` (not retried) elsewhere; an explicit Deny wins.
#[tokio::test]
async fn iam_policies_scope_a_key_to_its_namespace() {
    let policies = kcr_housekeeper::sim::iam::Policies::parse(
        r#"{"AKTEAMA": {"secret": "team-a-secret", "user": "team-a-bot", "statements": [
              {"effect": "Allow", "actions": ["kcrs:DescribeNamespace", "kcrs:DescribeRepository"],
               "resources": ["*"]},
              {"effect": "Allow", "actions": ["kcrs:DescribeImages", "kcrs:DeleteRepoTag"],
               "resources": ["krn:ksc:kcrs:*:*:repository/*/apps/*"]},
              {"effect": "Deny", "actions": ["kcrs:DeleteRepoTag"],
               "resources": ["krn:ksc:kcrs:*:*:repository/*/apps/api"]}]}}"#,
    )
    .unwrap();
    let sim = sim(SimOptions {
        policies: Some(policies),
        ..Default::default()
    })
    .await;
    let mut cfg = config_for(&sim);
    cfg.credentials = Credentials::new("AKTEAMA", "team-a-secret");
    let client = Client::new(cfg).unwrap();

    // Reads without resource authorisation are allowed by the first statement.
    let namespaces = client
        .list_all(DescribeNamespace::all(DEMO_INSTANCE))
        .await
        .unwrap();
    assert!(namespaces.iter().any(|n| n.namespace == "ci"));
    // Images in apps/* yes, in ci/* no.
    let web = client
        .list_all(DescribeImages::all(DEMO_INSTANCE, "apps", "web"))
        .await
        .unwrap();
    assert!(!web.is_empty());
    let before = sim.requests().len();
    let e = client
        .list_all(DescribeImages::all(DEMO_INSTANCE, "ci", "builder"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AccessDenied", "{e}");
    assert!(e.to_string().contains("DescribeImages"), "{e}");
    assert_eq!(
        sim.requests().len(),
        before + 1,
        "AccessDenied must not be retried"
    );
    // The explicit Deny on apps/api wins over the Allow on apps/*.
    let e = client
        .call(&DeleteRepoTag {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "apps".into(),
            repo_name: "api".into(),
            tag_name: "does-not-matter".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AccessDenied", "{e}");
    // The simulator's own key is the account's primary key: allowed everywhere.
    let admin = client_for(&sim);
    assert!(
        admin
            .list_all(DescribeImages::all(DEMO_INSTANCE, "ci", "builder"))
            .await
            .is_ok()
    );
}

/// Step 9 item 12: a page that came back full while the offset reached
/// `TotalCount` is followed by one more page; an item there means the count
/// was wrong, and the listing is `ListingChanged`, never 99 of 100 images.
#[tokio::test]
async fn a_full_last_page_is_checked_by_one_more_page() {
    // 100 images, TotalCount answered as 99: the first page (99) seems to end it.
    let sim = sim(SimOptions {
        faults: Faults {
            fault_rate: 1.0,
            kinds: vec![FaultKind::TotalCountLow],
            seed: Some(1),
            ..Default::default()
        },
        ..generated("namespaces=1,repos=1,images=100,seed=4")
    })
    .await;
    let client = client_for(&sim);
    let id = sim.world(|w| w.instances[0].id.clone());
    let err = client
        .list_all(DescribeImages::all(&id, "team0", "app0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ListingChanged", "{err}");
    let markers: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("DescribeImages"))
        .map(|e| e.params["Marker"].clone())
        .collect();
    assert_eq!(markers, ["0", "99"], "exactly one extra page");

    // Honest counts: 99 images end with one extra, empty page; 98 need none.
    for (images, calls) in [(99, 2), (98, 1)] {
        let sim = sim_for(&format!("namespaces=1,repos=1,images={images},seed=4")).await;
        let client = client_for(&sim);
        let id = sim.world(|w| w.instances[0].id.clone());
        let got = client
            .list_all(DescribeImages::all(&id, "team0", "app0"))
            .await
            .unwrap();
        assert_eq!(got.len(), images);
        assert_eq!(sim.count("DescribeImages"), calls, "{images} images");
    }
}

/// Review finding 13: the guard knew only pages of 99. An endpoint that
/// clamps `MaxResults` (the reference's defaults are 20 and 10) serves
/// full pages of fewer items and says so in the answer's `MaxResults`: a
/// page of that size reaching a lagging `TotalCount` was taken as the end,
/// and 20 of 21 images came back as the whole listing.
#[tokio::test]
async fn a_full_page_of_a_clamped_size_is_checked_by_one_more_page() {
    let clamped = |images: usize, low: bool| {
        let mut opts = generated(&format!("namespaces=1,repos=1,images={images},seed=4"));
        opts.faults = Faults {
            fault_rate: if low { 1.0 } else { 0.0 },
            kinds: vec![FaultKind::TotalCountLow],
            seed: Some(1),
            page_cap: Some(20),
            ..Default::default()
        };
        opts
    };
    let markers = |sim: &kcr_housekeeper::sim::Simulator| -> Vec<String> {
        sim.requests()
            .into_iter()
            .filter(|e| e.action.as_deref() == Some("DescribeImages"))
            .map(|e| e.params["Marker"].clone())
            .collect()
    };
    // 21 images, TotalCount answered as 20: the first page (20, all the
    // endpoint serves) seems to end it; one more page finds the 21st.
    let first = sim(clamped(21, true)).await;
    let id = first.world(|w| w.instances[0].id.clone());
    let err = client_for(&first)
        .list_all(DescribeImages::all(&id, "team0", "app0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ListingChanged", "{err}");
    assert_eq!(markers(&first), ["0", "20"], "exactly one extra page");

    // Honest counts: 40 images end with one extra, empty page; 39 need none.
    for (images, calls) in [(40, 3), (39, 2)] {
        let sim = sim(clamped(images, false)).await;
        let id = sim.world(|w| w.instances[0].id.clone());
        let got = client_for(&sim)
            .list_all(DescribeImages::all(&id, "team0", "app0"))
            .await
            .unwrap();
        assert_eq!(got.len(), images);
        assert_eq!(sim.count("DescribeImages"), calls, "{images} images");
    }
}

async fn sim_for(spec: &str) -> kcr_housekeeper::sim::Simulator {
    sim(generated(spec)).await
}

/// Step 9 item 2: the external endpoint as the SDK reads it, and a registry
/// `/v2/` that refuses callers no policy lets through, whatever their login.
#[tokio::test]
async fn external_endpoint_gates_the_registry() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let e = client
        .call(&DescribeExternalEndpoint {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap();
    assert!(e.is_open(), "the demo lets loopback in");
    assert_eq!(e.policies[0].entry, "127.0.0.0/8");
    assert!(e.policies[0].desc.contains("simulator"), "says why");
    let http = reqwest::Client::new();
    let v2 = format!("{}/v2/", sim.endpoint());
    let anon = http.get(&v2).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401, "open: reachable, login needed");

    // Closed (a new instance's default): 403 to anyone, even with a live token.
    let created = client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Days(1),
            desc: None,
        })
        .await
        .unwrap();
    let login = |http: &reqwest::Client| {
        http.get(&v2)
            .basic_auth(&created.username, Some(created.token.expose_secret()))
            .send()
    };
    assert_eq!(login(&http).await.unwrap().status().as_u16(), 200);
    sim.world(|w| w.instances[0].external_endpoint.opened = false);
    let e = client
        .call(&DescribeExternalEndpoint {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await
        .unwrap();
    assert_eq!(e.status, "Closed");
    assert_eq!(http.get(&v2).send().await.unwrap().status().as_u16(), 403);
    assert_eq!(login(&http).await.unwrap().status().as_u16(), 403);
    // Opened, but to another range only: still 403 from loopback.
    sim.world(|w| {
        let ep = &mut w.instances[0].external_endpoint;
        ep.opened = true;
        ep.policies = vec![("10.0.0.0/8".parse().unwrap(), "office".into())];
    });
    assert_eq!(login(&http).await.unwrap().status().as_u16(), 403);
}

/// Step 9 item 3: server-side retention is read per namespace; an endpoint
/// that does not know the action is "not supported", not an error.
#[tokio::test]
async fn server_side_retention_reads_and_unknown_actions() {
    use kcr_housekeeper::sim::world::{RetentionRule, RetentionTrigger};
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| {
        let ns = w.instances[0].namespaces.get_mut("ci").unwrap();
        ns.retention_rules = vec![RetentionRule {
            id: 3,
            disabled: false,
            registry_scope: "**".into(),
            rule_type: "byNum".into(),
            untagged: true,
            template: "latestPushedK".into(),
            tag_patten: None,
            param: Some(5),
        }];
        ns.retention_trigger = Some(RetentionTrigger {
            display_text: Some("daily".into()),
            cron: Some("0 0 0 * * *".into()),
            optional: vec![],
        });
    });
    let client = client_for(&sim);
    let ask = |ns: &str| DescribeRetentionRule {
        instance_id: DEMO_INSTANCE.into(),
        namespace: ns.into(),
    };
    let rules = client.call(&ask("ci")).await.unwrap();
    assert_eq!(rules.rules.len(), 1);
    assert_eq!(rules.rules[0].id.as_deref(), Some("3"));
    assert_eq!(rules.rules[0].param.as_deref(), Some("5"));
    assert!(client.call(&ask("apps")).await.unwrap().rules.is_empty());
    let t = client
        .call(&GetRetentionTrigger {
            instance_id: DEMO_INSTANCE.into(),
            namespace: "ci".into(),
        })
        .await
        .unwrap();
    assert_eq!(t.trigger.unwrap().cron.as_deref(), Some("0 0 0 * * *"));
    // A missing namespace is an error, not "not supported".
    let e = client
        .call_if_supported(&ask("nosuchns"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidParameterValue");

    // An action the endpoint does not know: NoSuchEntity 404 → Supported::No.
    #[derive(Clone)]
    struct Unknown;
    impl Action for Unknown {
        const NAME: &'static str = "DescribeSomethingNew";
        const READ_ONLY: bool = true;
        type Output = Ack;
        fn write_params(&self, _: &mut Params) {}
    }
    match client.call_if_supported(&Unknown).await.unwrap() {
        Supported::No { code } => assert_eq!(code, "NoSuchEntity"),
        other => panic!("expected not supported, got {other:?}"),
    }
}

/// A gate open for its first `open` checks, then closed (a lease that ran out).
struct CountingGate {
    open: u32,
    asked: std::sync::atomic::AtomicU32,
}

impl MutationGate for CountingGate {
    fn check(&self, _action: &'static str) -> Result<(), String> {
        let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.open {
            Ok(())
        } else {
            Err("lease lost".into())
        }
    }
}

/// Review finding 2 (Step 10): a retried mutation asks the gate before every
/// attempt, so a retry after a backoff that outlived the lease is never
/// sent; reads never ask; `call_once` asks too.
#[tokio::test]
async fn the_mutation_gate_is_asked_before_every_attempt_and_only_for_mutations() {
    let faults = Faults {
        fault_rate: 1.0,
        kinds: vec![FaultKind::LimitExceeded],
        seed: Some(1),
        ..Default::default()
    };
    let sim = sim_with_faults(faults).await;
    let mut cfg = config_for(&sim);
    cfg.retry.max_attempts = 5;
    let gate = std::sync::Arc::new(CountingGate {
        open: 2,
        asked: Default::default(),
    });
    let client = Client::new(cfg).unwrap().gated(gate.clone());
    let create = CreateInstanceToken {
        instance_id: DEMO_INSTANCE.into(),
        lifetime: TokenLifetime::Days(1),
        desc: None,
    };
    let err = client.call(&create).await.unwrap_err();
    assert!(
        matches!(err, Error::Withheld { .. }),
        "the third attempt is withheld: {err}"
    );
    assert_eq!(err.code(), "Withheld");
    assert_eq!(
        sim.count("CreateInstanceToken"),
        2,
        "only the attempts the gate let through reached the API"
    );
    assert_eq!(gate.asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Reads pass a closed gate (and never ask it).
    let _ = client
        .call(&DescribeInstanceUsage {
            instance_id: DEMO_INSTANCE.into(),
        })
        .await;
    assert!(sim.count("DescribeInstanceUsage") > 0);
    assert_eq!(gate.asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    // A single send with a reservation asks as well.
    let mut r = client.reserve(1).await;
    let err = client
        .call_once(
            &mut r,
            &DeleteImages {
                instance_id: DEMO_INSTANCE.into(),
                namespace: "ns".into(),
                repo_name: "repo".into(),
                image_id: "sha256:00".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "Withheld");
    assert_eq!(sim.count("DeleteImages"), 0, "nothing sent");
}
