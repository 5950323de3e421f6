#!/usr/bin/env python3
"""Independent SigV4 check (Step 9 item 11): botocore's SigV4Auth (service
`kcrs`) signs a set of requests; our signer must produce the same signatures
(tests/sigv4_vectors.rs reads the vectors written here), and the simulator
must accept botocore-signed requests.

Usage: sigv4_vectors.py OUT.json [ENDPOINT ACCESS_KEY_ID SECRET_ACCESS_KEY]
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "cn-beijing-6"
SERVICE = "kcrs"
DEMO = "eb1d0d73-4845-4283-a736-000000000001"
TIMESTAMP = "20261126T063000Z"
AK = "AKLTvectors"
SK = "vector-secret/with+reserved=chars"


def encode(pairs):
    # RFC 3986 unreserved kept, everything else percent-encoded (UTF-8), as SigV4 wants.
    return "&".join(
        urllib.parse.quote(k, safe="-_.~") + "=" + urllib.parse.quote(v, safe="-_.~") for k, v in pairs
    )


CASES = [
    ("GET plain", "GET", [("Action", "DescribeInstance"), ("Version", "2021-11-09")], None),
    (
        "GET reserved characters",
        "GET",
        [("Action", "DescribeImages"), ("Version", "2021-11-09"), ("Namespace", "a b+c/d?e&f=g%h*i~j'k(l)m!n")],
        None,
    ),
    (
        "GET CJK",
        "GET",
        [("Action", "DescribeInstanceToken"), ("Version", "2021-11-09"), ("Desc", "镜像仓库-测试 ✓")],
        None,
    ),
    ("GET empty values", "GET", [("Action", "DescribeNamespace"), ("Version", "2021-11-09"), ("Marker", ""), ("Empty", "")], None),
    (
        "GET repeated keys",
        "GET",
        [("Action", "DescribeInstance"), ("Version", "2021-11-09"), ("InstanceId", "b"), ("InstanceId", "a"), ("InstanceId", "")],
        None,
    ),
    (
        "POST form",
        "POST",
        [("Action", "ModifyNamespaceType"), ("Version", "2021-11-09")],
        [("InstanceId", DEMO), ("Namespace", "sandbox"), ("Public", "False"), ("Desc", "说明 a+b=c&d")],
    ),
    ("POST empty body", "POST", [("Action", "DescribeInstance"), ("Version", "2021-11-09")], []),
]


def sign_fixed(method, host, query_pairs, body_pairs):
    auth = SigV4Auth(Credentials(AK, SK), SERVICE, REGION)
    url = f"http://{host}/" + ("?" + encode(query_pairs) if query_pairs else "")
    headers = {}
    data = None
    if body_pairs is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        data = encode(body_pairs).encode()
    req = AWSRequest(method=method, url=url, data=data, headers=headers)
    req.context["timestamp"] = TIMESTAMP
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    sts = auth.string_to_sign(req, canonical)
    signed = auth.signed_headers(auth.headers_to_sign(req))
    return {
        "method": method,
        "host": host,
        "query": [list(p) for p in query_pairs],
        "body": data.decode() if data is not None else "",
        "headers": {k: v for k, v in req.headers.items()},
        "signed_headers": signed,
        "timestamp": TIMESTAMP,
        "canonical_request": canonical,
        "signature": auth.signature(sts, req),
    }


def live(endpoint, ak, sk):
    """The simulator accepts requests botocore signs (real time)."""
    failed = 0
    auth = SigV4Auth(Credentials(ak, sk), SERVICE, REGION)
    for name, method, query, body in [
        ("GET", "GET", [("Action", "DescribeInstance"), ("Version", "2021-11-09"), ("InstanceId.1", DEMO)], None),
        ("GET repository listing", "GET", [("Action", "DescribeRepository"), ("Version", "2021-11-09"), ("InstanceId", DEMO), ("Namespace", "apps")], None),
        ("POST form", "POST", [("Action", "DescribeNamespace"), ("Version", "2021-11-09")], [("InstanceId", DEMO), ("Marker", "0")]),
    ]:
        url = f"http://{endpoint}/?" + encode(query)
        headers = {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = encode(body).encode()
        req = AWSRequest(method=method, url=url, data=data, headers=headers)
        auth.add_auth(req)
        prepared = req.prepare()
        r = urllib.request.Request(prepared.url, data=prepared.body, headers=dict(prepared.headers), method=method)
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            print(e.read().decode(errors="replace"))
        ok = status == 200
        failed += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} simulator accepts a botocore-signed {name} (HTTP {status})")
    # A botocore signature with the wrong secret is refused.
    bad = SigV4Auth(Credentials(ak, sk + "x"), SERVICE, REGION)
    req = AWSRequest(method="GET", url=f"http://{endpoint}/?" + encode([("Action", "DescribeInstance"), ("Version", "2021-11-09")]))
    bad.add_auth(req)
    p = req.prepare()
    try:
        urllib.request.urlopen(urllib.request.Request(p.url, headers=dict(p.headers)), timeout=10)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    ok = status == 403
    failed += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} simulator refuses a botocore signature made with the wrong secret (HTTP {status})")
    return failed


def main():
    out = sys.argv[1]
    vectors = []
    for name, method, query, body in CASES:
        v = sign_fixed(method, "kcrs.api.ksyun.com", query, body)
        v["name"] = name
        vectors.append(v)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"access_key_id": AK, "secret_access_key": SK, "region": REGION, "service": SERVICE, "vectors": vectors}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(vectors)} botocore SigV4 vectors to {out}")
    if len(sys.argv) >= 5 and live(*sys.argv[2:5]):
        sys.exit(1)


if __name__ == "__main__":
    main()
