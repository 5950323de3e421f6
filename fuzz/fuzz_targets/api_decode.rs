//! Decoding any API answer (any status, any body) never panics, and an error
//! never quotes the body: the seeds carry a marker where a token's secret
//! would be, and no error text may contain it. Two fields are quoted on
//! purpose: an API error document's code and message, and the request id
//! (support asks for it; the client shows it only when shaped like an id).
#![no_main]

use kcr_housekeeper::kcr::client::decode_response;
use kcr_housekeeper::kcr::{
    CreateInstanceToken, DeleteImages, DescribeImages, DescribeInstance, DescribeInstanceToken,
    DescribeInstanceUsage, DescribeNamespace, DescribeRepository,
};
use libfuzzer_sys::fuzz_target;

const MARKER: &str = "zq9SECRETzq9";

fn check<T>(r: Result<T, kcr_housekeeper::kcr::Error>, body: &[u8]) {
    if let Err(e) = r {
        let mut text = format!("{e} {e:?}");
        assert!(!text.is_empty());
        if let kcr_housekeeper::kcr::Error::Api { request_id, .. }
        | kcr_housekeeper::kcr::Error::Decode { request_id, .. } = &e
        {
            if !request_id.is_empty() {
                text = text.replace(request_id.as_str(), "<request id>");
            }
        }
        // An API error document's code and message are reported on purpose.
        let error_document = matches!(e, kcr_housekeeper::kcr::Error::Api { .. });
        if !error_document && String::from_utf8_lossy(body).contains(MARKER) {
            assert!(!text.contains(MARKER), "an error quotes the body: {text}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[which, status], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = [200u16, 200, 200, 400, 403, 404, 409, 500, 503][status as usize % 9];
    match which % 8 {
        0 => check(decode_response::<DescribeImages>(status, body), body),
        1 => check(decode_response::<DescribeInstanceToken>(status, body), body),
        2 => check(decode_response::<CreateInstanceToken>(status, body), body),
        3 => check(decode_response::<DescribeInstanceUsage>(status, body), body),
        4 => check(decode_response::<DescribeNamespace>(status, body), body),
        5 => check(decode_response::<DescribeRepository>(status, body), body),
        6 => check(decode_response::<DescribeInstance>(status, body), body),
        _ => check(decode_response::<DeleteImages>(status, body), body),
    }
});
