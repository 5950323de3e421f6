//! Verifies AWS SigV4 signatures the way the KCR gateway does, answering with
//! the reference's error codes and messages.

use super::world::ApiError;
use chrono::{DateTime, NaiveDateTime, Utc};
use http::HeaderMap;
use kcr::signer::{self, AuthorizationDefect, CanonicalInput, PlusIs};

/// How far a request's `X-Amz-Date` may be from the server clock.
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(15);

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

fn incomplete(msg: String) -> ApiError {
    ApiError::new(400, "IncompleteSignature", msg)
}

fn mismatch(msg: impl Into<String>) -> ApiError {
    ApiError::new(403, "SignatureDoesNotMatch", msg)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Check the request's signature; `secret_of` gives the secret of an access
/// key id the simulator knows. Returns the access key id that signed.
pub fn verify(
    req: &Request<'_>,
    secret_of: &dyn Fn(&str) -> Option<String>,
    region: &str,
    service: &str,
    now: DateTime<Utc>,
) -> Result<String, ApiError> {
    if header(req.headers, "host").is_none() {
        return Err(ApiError::new(
            403,
            "MissingAuthenticationToken",
            "Request is missing 'Host' header.",
        ));
    }
    let Some(auth) = header(req.headers, "authorization") else {
        if req.raw_query.contains("X-Amz-Algorithm") || req.raw_query.contains("X-Amz-Signature") {
            for p in [
                "X-Amz-Algorithm",
                "X-Amz-Credential",
                "X-Amz-SignedHeaders",
                "X-Amz-Date",
                "X-Amz-Signature",
            ] {
                if !req.raw_query.contains(p) {
                    return Err(incomplete(format!(
                        "KSC query-string parameters must include {p}. Re-examine the query-string parameters."
                    )));
                }
            }
            return Err(incomplete(
                "Query-string authentication is not supported by this endpoint.".into(),
            ));
        }
        return Err(ApiError::new(
            403,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token.",
        ));
    };
    let parsed = signer::parse_authorization(auth).map_err(|d| match d {
        AuthorizationDefect::Format => incomplete("Authorization header format error.".into()),
        AuthorizationDefect::Algorithm(a) => {
            incomplete(format!("Unsupported ksc 'algorithm': {a}."))
        }
        AuthorizationDefect::MissingCredential => incomplete(format!(
            "Authorization header requires 'Credential' parameter. Authorization={auth}."
        )),
        AuthorizationDefect::MissingSignedHeaders => incomplete(format!(
            "Authorization header requires 'SignedHeaders' parameter. Authorization={auth}"
        )),
        AuthorizationDefect::MissingSignature => incomplete(format!(
            "Authorization header requires 'Signature' parameter. Authorization={auth}"
        )),
    })?;
    let scope: Vec<&str> = parsed.credential.split('/').collect();
    if scope.len() != 5 {
        return Err(incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. accesskeyid/date/region/service/aws4_request, got: {}.",
            parsed.credential
        )));
    }
    let (key_id, date, cred_region, cred_service, terminator) =
        (scope[0], scope[1], scope[2], scope[3], scope[4]);
    if terminator != "aws4_request" {
        return Err(mismatch(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not: {terminator}."
        )));
    }
    if cred_region != region {
        return Err(mismatch(format!(
            "Credential should be scoped to a valid region, not:{cred_region}."
        )));
    }
    if cred_service != service {
        return Err(mismatch(format!(
            "Credential should be scoped to correct service: {service}."
        )));
    }
    let Some(amz_date) = header(req.headers, "x-amz-date").or_else(|| header(req.headers, "date"))
    else {
        return Err(incomplete(format!(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header, Authorization={auth}"
        )));
    };
    let Ok(when) = NaiveDateTime::parse_from_str(amz_date, signer::AMZ_DATE_FORMAT) else {
        return Err(incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601 ."
        )));
    };
    if &amz_date[..8] != date {
        return Err(mismatch(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
        ));
    }
    let Some(secret) = secret_of(key_id) else {
        return Err(ApiError::new(
            403,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        ));
    };
    let when = when.and_utc();
    if (now - when).abs() > MAX_SKEW {
        return Err(mismatch(format!(
            "Signature expired:{amz_date} is now earlier than {} ({} - 15 min.).",
            (now - MAX_SKEW).format(signer::AMZ_DATE_FORMAT),
            now.format(signer::AMZ_DATE_FORMAT)
        )));
    }
    let signed: Vec<&str> = parsed.signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(mismatch(
            "'Host' must be a 'SignedHeader' in the Authorization.",
        ));
    }
    let mut values: Vec<(String, String)> = Vec::with_capacity(signed.len());
    for name in &signed {
        let all: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if all.is_empty() {
            return Err(ApiError::new(
                403,
                "MissingAuthenticationToken",
                format!("{name} not in Http Header."),
            ));
        }
        values.push(((*name).to_owned(), all.join(",")));
    }
    let header_refs: Vec<(&str, &str)> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    // The payload hash is always computed from the body received, so a body
    // changed in transit fails the check even if the client sent its own hash.
    let payload_hash = signer::sha256_hex(req.body);
    let modes: &[PlusIs] = if req.raw_query.contains('+') {
        &[PlusIs::Literal, PlusIs::Space]
    } else {
        &[PlusIs::Literal]
    };
    for plus in modes {
        let pairs = signer::decode_query(req.raw_query, *plus);
        let query = signer::canonical_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let input = CanonicalInput {
            method: req.method,
            path: req.path,
            query: &query,
            headers: &header_refs,
            payload_hash: &payload_hash,
        };
        let (creq, _) = signer::canonical_request(&input);
        let sts = signer::string_to_sign(
            amz_date,
            &signer::scope(date, cred_region, cred_service),
            &creq,
        );
        let expected = signer::signature(&secret, date, cred_region, cred_service, &sts);
        if signer::constant_time_eq(&expected, parsed.signature) {
            return Ok(key_id.to_owned());
        }
    }
    Err(mismatch(
        "The request signature we calculated does not match the signature you provided.",
    ))
}
