//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`), as KCR uses it.
//!
//! The same canonicalisation serves the client (signing) and the simulator
//! (verification), so the two can never disagree about what was signed.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `X-Amz-Date` format: ISO 8601 basic.
pub const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// RFC 3986 unreserved characters stay as they are; everything else is `%XX`.
const AWS_URI_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path segments additionally keep `/`.
const AWS_PATH_ENCODE: &AsciiSet = &AWS_URI_ENCODE.remove(b'/');

type HmacSha256 = Hmac<Sha256>;

/// Percent-encode a query key or value the way SigV4 requires.
pub fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_URI_ENCODE).to_string()
}

/// Hex SHA-256 of a payload.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // A key of any length is valid for HMAC; `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Canonical query string from already-decoded pairs: encode, then sort by key and value.
pub fn canonical_query<'a, I>(pairs: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut encoded: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    encoded.sort();
    let mut out = String::with_capacity(encoded.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// How `+` in a raw query string is read. Clients disagree: SigV4 says it is a
/// literal plus, HTML forms (and so some SDKs) mean a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlusIs {
    Literal,
    Space,
}

/// Decode a raw query string (`a=1&b=x%20y`) into pairs.
pub fn decode_query(raw: &str, plus: PlusIs) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k, plus), decode_component(v, plus))
        })
        .collect()
}

fn decode_component(s: &str, plus: PlusIs) -> String {
    let replaced;
    let s = if plus == PlusIs::Space && s.contains('+') {
        replaced = s.replace('+', " ");
        replaced.as_str()
    } else {
        s
    };
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Canonical URI: each path segment encoded once (non-S3 services).
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    utf8_percent_encode(&decoded, AWS_PATH_ENCODE).to_string()
}

/// Trim a header value and fold inner runs of whitespace to one space.
fn canonical_header_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, word) in v.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// What goes into a signature, independent of any HTTP library.
#[derive(Debug)]
pub struct CanonicalInput<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The canonical query string (see [`canonical_query`]).
    pub query: &'a str,
    /// Headers to sign; names in any case. Several values of one name are joined with `,`.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_hash: &'a str,
}

/// Returns `(canonical_request, signed_headers)`.
pub fn canonical_request(input: &CanonicalInput<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(input.headers.len());
    for (name, value) in input.headers {
        let name = name.to_ascii_lowercase();
        let value = canonical_header_value(value);
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut creq = String::with_capacity(256);
    creq.push_str(&input.method.to_ascii_uppercase());
    creq.push('\n');
    creq.push_str(&canonical_uri(input.path));
    creq.push('\n');
    creq.push_str(input.query);
    creq.push('\n');
    for (n, v) in &headers {
        creq.push_str(n);
        creq.push(':');
        creq.push_str(v);
        creq.push('\n');
    }
    creq.push('\n');
    creq.push_str(&signed_headers);
    creq.push('\n');
    creq.push_str(input.payload_hash);
    (creq, signed_headers)
}

/// The credential scope `<date>/<region>/<service>/aws4_request`.
pub fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Derive the signing key and sign. `date` is `YYYYMMDD`.
pub fn signature(secret: &str, date: &str, region: &str, service: &str, sts: &str) -> String {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, sts.as_bytes()))
}

/// Sign a request; returns the `Authorization` header value.
pub fn authorization(
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    time: DateTime<Utc>,
    input: &CanonicalInput<'_>,
) -> String {
    let amz_date = time.format(AMZ_DATE_FORMAT).to_string();
    let date = &amz_date[..8];
    let scope = scope(date, region, service);
    let (creq, signed_headers) = canonical_request(input);
    let sts = string_to_sign(&amz_date, &scope, &creq);
    let sig = signature(secret, date, region, service, &sts);
    format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"
    )
}

/// Parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedAuthorization<'a> {
    pub algorithm: &'a str,
    pub credential: &'a str,
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

/// Which part of an `Authorization` header is missing or malformed.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizationDefect {
    Format,
    Algorithm(String),
    MissingCredential,
    MissingSignedHeaders,
    MissingSignature,
}

pub fn parse_authorization(header: &str) -> Result<ParsedAuthorization<'_>, AuthorizationDefect> {
    let header = header.trim();
    let (algorithm, rest) = header.split_once(' ').ok_or(AuthorizationDefect::Format)?;
    if algorithm != ALGORITHM {
        return Err(AuthorizationDefect::Algorithm(algorithm.to_owned()));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').ok_or(AuthorizationDefect::Format)?;
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed_headers = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => return Err(AuthorizationDefect::Format),
        }
    }
    Ok(ParsedAuthorization {
        algorithm,
        credential: credential.ok_or(AuthorizationDefect::MissingCredential)?,
        signed_headers: signed_headers.ok_or(AuthorizationDefect::MissingSignedHeaders)?,
        signature: signature.ok_or(AuthorizationDefect::MissingSignature)?,
    })
}

/// Constant-time comparison, for signatures and secrets.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // The AWS SigV4 test suite's fixed inputs.
    const AK: &str = "AKIDEXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn suite_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0).unwrap()
    }

    fn sign_suite(method: &str, query: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
        let hash = sha256_hex(body);
        let pairs = decode_query(query, PlusIs::Literal);
        let cq = canonical_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        authorization(
            AK,
            SK,
            "us-east-1",
            "service",
            suite_time(),
            &CanonicalInput {
                method,
                path: "/",
                query: &cq,
                headers,
                payload_hash: &hash,
            },
        )
    }

    const HOST: (&str, &str) = ("Host", "example.amazonaws.com");
    const DATE: (&str, &str) = ("X-Amz-Date", "20150830T123600Z");

    /// Found by `cargo fuzz run sigv4_canonical` (fuzz/artifacts): a path
    /// without its leading slash and control characters in a query.
    #[test]
    fn fuzz_regression_control_characters_and_a_relative_path() {
        assert_eq!(canonical_uri("\u{11}"), "%11");
        assert_eq!(canonical_uri("/\u{11}"), "/%11");
        let pairs = decode_query("\u{11}\u{18}", PlusIs::Literal);
        let once = canonical_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(once, "%11%18=");
        let again = decode_query(&once, PlusIs::Literal);
        assert_eq!(
            canonical_query(again.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            once
        );
    }

    #[test]
    fn aws_suite_get_vanilla() {
        assert_eq!(
            sign_suite("GET", "", &[HOST, DATE], b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        assert_eq!(
            sign_suite("GET", "Param2=value2&Param1=value1", &[HOST, DATE], b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn aws_suite_post_vanilla_query() {
        assert_eq!(
            sign_suite("POST", "Param1=value1", &[HOST, DATE], b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
        );
    }

    #[test]
    fn aws_suite_post_x_www_form_urlencoded() {
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            HOST,
            DATE,
        ];
        assert_eq!(
            sign_suite("POST", "", &headers, b"Param1=value1"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn kcr_request_canonical_form() {
        // A DescribeNamespace GET as the client sends it; pins the canonical request so a
        // change in encoding (spaces, ordering, list params) cannot slip through.
        let pairs = [
            ("Version", "2021-11-09"),
            ("Action", "DescribeNamespace"),
            ("InstanceId", "eb1d0d73-4845-4283-a736-000000000000"),
            ("Namespace", "a b+c"),
            ("MaxResults", "99"),
        ];
        let cq = canonical_query(pairs);
        assert_eq!(
            cq,
            "Action=DescribeNamespace&InstanceId=eb1d0d73-4845-4283-a736-000000000000\
             &MaxResults=99&Namespace=a%20b%2Bc&Version=2021-11-09"
        );
        let headers = [
            ("host", "kcrs.api.ksyun.com"),
            ("x-amz-date", "20221108T080000Z"),
        ];
        let hash = sha256_hex(b"");
        let input = CanonicalInput {
            method: "GET",
            path: "/",
            query: &cq,
            headers: &headers,
            payload_hash: &hash,
        };
        let (creq, signed) = canonical_request(&input);
        assert_eq!(signed, "host;x-amz-date");
        assert!(creq.starts_with("GET\n/\nAction=DescribeNamespace&"));
        let t = Utc.with_ymd_and_hms(2022, 11, 8, 8, 0, 0).unwrap();
        let auth = authorization("AKLTtest", "secret", "cn-beijing-6", "kcrs", t, &input);
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKLTtest/20221108/cn-beijing-6/kcrs/aws4_request, SignedHeaders=host;x-amz-date, Signature="
        ));
        // Same input, same signature; another secret, another signature.
        assert_eq!(
            auth,
            authorization("AKLTtest", "secret", "cn-beijing-6", "kcrs", t, &input)
        );
        assert_ne!(
            auth,
            authorization("AKLTtest", "secreT", "cn-beijing-6", "kcrs", t, &input)
        );
    }

    #[test]
    fn parses_authorization_and_names_defects() {
        let p = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20150830/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(p.credential, "AK/20150830/r/s/aws4_request");
        assert_eq!(p.signed_headers, "host;x-amz-date");
        assert_eq!(p.signature, "abc");
        assert_eq!(
            parse_authorization("HMAC Credential=x").unwrap_err(),
            AuthorizationDefect::Algorithm("HMAC".into())
        );
        assert_eq!(
            parse_authorization("AWS4-HMAC-SHA256 Credential=x, Signature=y").unwrap_err(),
            AuthorizationDefect::MissingSignedHeaders
        );
        assert_eq!(
            parse_authorization("garbage").unwrap_err(),
            AuthorizationDefect::Format
        );
    }

    #[test]
    fn header_values_are_folded_and_duplicates_joined() {
        let headers = [
            ("My-Header1", "  a   b  "),
            ("my-header1", "c"),
            ("Host", "h"),
        ];
        let input = CanonicalInput {
            method: "get",
            path: "",
            query: "",
            headers: &headers,
            payload_hash: "x",
        };
        let (creq, signed) = canonical_request(&input);
        assert_eq!(signed, "host;my-header1");
        assert_eq!(
            creq,
            "GET\n/\n\nhost:h\nmy-header1:a b,c\n\nhost;my-header1\nx"
        );
    }

    #[test]
    fn plus_decoding_modes() {
        assert_eq!(
            decode_query("a=x+y", PlusIs::Literal),
            vec![("a".into(), "x+y".into())]
        );
        assert_eq!(
            decode_query("a=x+y", PlusIs::Space),
            vec![("a".into(), "x y".into())]
        );
        assert_eq!(
            decode_query("a=%2B&b", PlusIs::Space),
            vec![("a".into(), "+".into()), ("b".into(), "".into())]
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq("abcd", "abcd"));
        assert!(!constant_time_eq("abcd", "abce"));
        assert!(!constant_time_eq("abcd", "abc"));
    }
}
