//! Step 9 item 11: our SigV4 signer against botocore's, independently.
//! `tests/conformance/sigv4_vectors.py` writes requests botocore's SigV4Auth
//! (service `kcrs`) signed — reserved characters, CJK, empty values, repeated
//! keys, GET and POST — and this test signs the same requests with our signer
//! and demands identical canonical requests and signatures.
//!
//! The conformance step (tests/conformance/run.sh) runs it with
//! `KCR_SIGV4_VECTORS` set; without the variable (a plain `cargo test`, where
//! botocore is not installed) there is nothing to compare and it says so.

use chrono::NaiveDateTime;
use kcr_housekeeper::kcr::signer::{self, CanonicalInput};

#[test]
fn our_signer_matches_botocore() {
    let Ok(path) = std::env::var("KCR_SIGV4_VECTORS") else {
        eprintln!(
            "KCR_SIGV4_VECTORS not set: run tests/conformance/run.sh to compare with botocore"
        );
        return;
    };
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("vectors file")).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let (ak, sk) = (s(&doc["access_key_id"]), s(&doc["secret_access_key"]));
    let (region, service) = (s(&doc["region"]), s(&doc["service"]));
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 7, "the vector set is complete");
    let mut mismatches = Vec::new();
    for v in vectors {
        let name = s(&v["name"]);
        let ts = s(&v["timestamp"]);
        let time = NaiveDateTime::parse_from_str(&ts, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let pairs: Vec<(String, String)> = v["query"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (s(&p[0]), s(&p[1])))
            .collect();
        let query = signer::canonical_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let host = s(&v["host"]);
        // The headers botocore signed: host plus the request's own.
        let mut headers: Vec<(String, String)> = vec![("host".into(), host)];
        for (k, val) in v["headers"].as_object().unwrap() {
            headers.push((k.clone(), s(val)));
        }
        let signed: Vec<String> = s(&v["signed_headers"])
            .split(';')
            .map(str::to_owned)
            .collect();
        headers.retain(|(k, _)| signed.contains(&k.to_ascii_lowercase()));
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let payload = signer::sha256_hex(s(&v["body"]).as_bytes());
        let input = CanonicalInput {
            method: &s(&v["method"]),
            path: "/",
            query: &query,
            headers: &header_refs,
            payload_hash: &payload,
        };
        let (creq, signed_headers) = signer::canonical_request(&input);
        let auth = signer::authorization(&ak, &sk, &region, &service, time, &input);
        let ours = auth.rsplit("Signature=").next().unwrap();
        let theirs = s(&v["signature"]);
        if creq != s(&v["canonical_request"])
            || signed_headers != s(&v["signed_headers"])
            || ours != theirs
        {
            mismatches.push(format!(
                "{name}:\n ours   {ours}\n theirs {theirs}\n--- our canonical request\n{creq}\n--- botocore's\n{}",
                s(&v["canonical_request"])
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
    eprintln!("{} botocore vectors: identical signatures", vectors.len());
}
