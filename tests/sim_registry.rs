//! The simulator's registry API v2 over real HTTP (reqwest on 127.0.0.1:0),
//! without a registry client installed: the Bearer token protocol, manifests
//! and config blobs whose digests are their real sha256, and the documented
//! refusal of a scenario `ImageId` as a manifest digest.
//! (`tests/token_sinks.rs` drives the same API with Debian's skopeo.)

mod common;

use common::{DEMO_INSTANCE, client_for, sim};
use kcr_housekeeper::kcr::ModifyInstanceTokenStatus;
use kcr_housekeeper::sim::SimOptions;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
/// The demo's `apps/web:v1.4.2`.
const IMAGE_ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111101";

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// `realm`, `service` and `scope` of a `Bearer` challenge.
fn challenge(r: &reqwest::Response) -> std::collections::BTreeMap<String, String> {
    let h = r.headers()["www-authenticate"].to_str().unwrap();
    let params = h.strip_prefix("Bearer ").expect("a Bearer challenge");
    params
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

#[tokio::test]
async fn the_bearer_protocol_serves_manifests_and_blobs_under_their_real_digests() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let created = common::demo_hour_token(&client).await;
    let (user, secret) = (
        created.username.clone(),
        created.token.expose_secret().to_owned(),
    );
    let http = reqwest::Client::new();
    let base = sim.endpoint();
    let manifest_url = format!("{base}/v2/apps/web/manifests/v1.4.2");

    // Anonymous: 401 with a challenge naming the realm and the repository.
    let r = http.get(&manifest_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let c = challenge(&r);
    assert_eq!(c["realm"], format!("{base}/service/token"));
    assert_eq!(c["scope"], "repository:apps/web:pull");

    // The realm: wrong credentials refused, right ones buy a Bearer token.
    let token_url = format!(
        "{}?service={}&scope={}",
        c["realm"], c["service"], c["scope"]
    );
    let r = http
        .get(&token_url)
        .basic_auth(&user, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&token_url)
        .basic_auth(&user, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let bearer = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], bearer.as_str());
    assert!(body["expires_in"].as_i64().unwrap() > 0);

    // Docker schema 2 by default, OCI when only OCI is accepted; each body
    // hashes to its Docker-Content-Digest and names a config blob that
    // hashes to its digest and carries the scenario's ImageId.
    let mut digests = Vec::new();
    for (accept, media) in [(format!("{DOCKER}, {OCI}"), DOCKER), (OCI.to_owned(), OCI)] {
        let r = http
            .get(&manifest_url)
            .bearer_auth(&bearer)
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], media);
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = r.bytes().await.unwrap();
        assert_eq!(sha256(&body), digest, "{media}");
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        let config_digest = m["config"]["digest"].as_str().unwrap();
        let blob = http
            .get(format!("{base}/v2/apps/web/blobs/{config_digest}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), 200);
        let blob = blob.bytes().await.unwrap();
        assert_eq!(sha256(&blob), config_digest);
        assert_eq!(m["config"]["size"], blob.len());
        let config: serde_json::Value = serde_json::from_slice(&blob).unwrap();
        assert_eq!(
            config["config"]["Labels"]["com.ksyun.kcr-sim.image-id"],
            IMAGE_ID
        );
        digests.push(digest);
    }
    assert_ne!(digests[0], digests[1]);

    // By digest (Basic this time), and HEAD: the same digest, no body.
    let r = http
        .head(format!("{base}/v2/apps/web/manifests/{}", digests[0]))
        .basic_auth(&user, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digests[0].as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    // The scenario's ImageId is no manifest digest: refused, saying why.
    let r = http
        .get(format!("{base}/v2/apps/web/manifests/{IMAGE_ID}"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert!(
        e["errors"][0]["detail"]["why"]
            .as_str()
            .unwrap()
            .contains("not a manifest digest")
    );

    // Unknown names and tags.
    for (path, code) in [
        ("apps/nope/manifests/v1", "NAME_UNKNOWN"),
        ("apps/web/manifests/no-such-tag", "MANIFEST_UNKNOWN"),
        ("apps/web/blobs/sha256:00", "BLOB_UNKNOWN"),
    ] {
        let r = http
            .get(format!("{base}/v2/{path}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["errors"][0]["code"], code, "{path}");
    }
    let tags: serde_json::Value = http
        .get(format!("{base}/v2/apps/web/tags/list"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        tags["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "v1.4.2")
    );

    // The Bearer token dies with the instance token it was bought with.
    client
        .call(&ModifyInstanceTokenStatus {
            instance_id: DEMO_INSTANCE.into(),
            token_id: created.token_id.clone(),
            enable: false,
        })
        .await
        .unwrap();
    let r = http
        .get(&manifest_url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "disabled token, Bearer");
    let r = http
        .get(&token_url)
        .basic_auth(&user, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "disabled token, realm");

    // The external endpoint's policy comes first: closed, 403 whatever is asked.
    sim.world(|w| {
        for i in w.instances.iter_mut() {
            i.external_endpoint.opened = false;
        }
    });
    for url in [&manifest_url, &token_url, &format!("{base}/v2/")] {
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 403, "{url}");
    }
}
