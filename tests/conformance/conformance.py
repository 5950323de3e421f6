#!/usr/bin/env python3
"""Drive the kcr-housekeeper simulator with the official Kingsoft Cloud Python SDK.

The simulator must accept the SDK unchanged: its form and JSON POSTs, its GETs
(which sign Content-Type), and its extra bookkeeping parameters. A request
signed with a wrong secret must be refused with SignatureDoesNotMatch.

Usage: conformance.py ENDPOINT ACCESS_KEY_ID SECRET_ACCESS_KEY
where ENDPOINT is host:port of a simulator serving the built-in demo scenario.
"""

import json
import sys

from ksyun.client.kcrs.v20211109 import client as kcrs_client
from ksyun.client.kcrs.v20211109 import models
from ksyun.common import credential
from ksyun.common.exception.ksyun_sdk_exception import KsyunSDKException
from ksyun.common.profile.client_profile import ClientProfile
from ksyun.common.profile.http_profile import HttpProfile

REGION = "cn-beijing-6"
DEMO = "eb1d0d73-4845-4283-a736-000000000001"

passed = 0
failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def make_client(endpoint, ak, sk, method="POST"):
    http = HttpProfile(protocol="http", endpoint=endpoint, reqMethod=method, reqTimeout=10)
    return kcrs_client.KcrsClient(credential.Credential(ak, sk), REGION, ClientProfile(httpProfile=http))


def call(client, action, params):
    req = getattr(models, action + "Request")()
    # Attributes are set directly: the SDK's from_json_string drops falsy values
    # (Public=False, Marker=0), which would change the request.
    for key, value in params.items():
        setattr(req, key, value)
    return json.loads(getattr(client, action)(req))


def main():
    endpoint, ak, sk = sys.argv[1], sys.argv[2], sys.argv[3]
    post = make_client(endpoint, ak, sk, "POST")
    get = make_client(endpoint, ak, sk, "GET")

    # 1. DescribeInstance (form POST)
    r = call(post, "DescribeInstance", {})
    check("DescribeInstance lists the demo instance", [i["InstanceId"] for i in r["InstanceSet"]] == [DEMO], r)
    # The SDK flattens lists from 0 (InstanceId.0), the reference from 1: both are taken.
    r = call(post, "DescribeInstance", {"InstanceId": [DEMO]})
    check("DescribeInstance with the SDK's InstanceId.0", [i["InstanceId"] for i in r["InstanceSet"]] == [DEMO], r)

    # 2. DescribeInstanceUsage (the SDK posts JSON here)
    r = call(post, "DescribeInstanceUsage", {"InstanceId": DEMO})
    check("DescribeInstanceUsage (JSON body)", r["NamespaceUsage"] == 8 and r["NamespaceQuota"] == 10, r)

    # 3. DescribeNamespace paginated with MaxResults=3 over GET
    names, marker, pages = [], 0, 0
    while True:
        r = call(get, "DescribeNamespace", {"InstanceId": DEMO, "MaxResults": 3, "Marker": marker})
        pages += 1
        names += [n["Namespace"] for n in r["NamespaceSet"]]
        marker = r["Marker"]
        if marker == 0:
            break
    check("DescribeNamespace paginates over GET", len(names) == 8 and pages == 3 and len(set(names)) == 8, (names, pages))
    check("RepoCount arrives as a string", isinstance(r["NamespaceSet"][0]["RepoCount"], str), r)

    # 4. DescribeNamespaceExist (JSON body)
    r = call(post, "DescribeNamespaceExist", {"InstanceId": DEMO, "Namespace": "apps"})
    check("DescribeNamespaceExist (JSON body)", r["Exist"] is True, r)

    # 5. CreateNamespace, 6. ModifyNamespaceType (visibility change), 7. DeleteNamespace
    call(post, "CreateNamespace", {"InstanceId": DEMO, "Namespace": "sdkns", "Public": False})
    call(post, "ModifyNamespaceType", {"InstanceId": DEMO, "Namespace": "sdkns", "Public": True})
    r = call(get, "DescribeNamespace", {"InstanceId": DEMO, "Namespace": "sdkns"})
    check("ModifyNamespaceType made the namespace public", r["NamespaceSet"][0]["Public"] is True, r)
    call(post, "DeleteNamespace", {"InstanceId": DEMO, "Namespace": "sdkns"})
    r = call(post, "DescribeNamespaceExist", {"InstanceId": DEMO, "Namespace": "sdkns"})
    check("DeleteNamespace removed it", r["Exist"] is False, r)

    # 8. DescribeRepository
    r = call(get, "DescribeRepository", {"InstanceId": DEMO, "Namespace": "apps"})
    check("DescribeRepository", sorted(x["RepoName"] for x in r["RepoSet"]) == ["api", "web", "worker"], r)

    # 9. DescribeImages, 10. DeleteRepoTag, 11. DeleteImages
    def images():
        return call(get, "DescribeImages", {"InstanceId": DEMO, "Namespace": "apps", "RepoName": "web", "MaxResults": 99})["ImageSet"]

    before = images()
    call(post, "DeleteRepoTag", {"InstanceId": DEMO, "Namespace": "apps", "RepoName": "web", "TagName": "pr-101"})
    after = images()
    check("DeleteRepoTag keeps the image", len(after) == len(before), (len(before), len(after)))
    check("DeleteRepoTag removed the tag", not any("pr-101" in (i["TagNames"] or []) for i in after), after)
    target = next(i for i in after if "v1.4.1" in (i["TagNames"] or []))
    call(post, "DeleteImages", {"InstanceId": DEMO, "Namespace": "apps", "RepoName": "web", "ImageId": target["ImageId"]})
    after2 = images()
    check("DeleteImages removed the image and its tags",
          len(after2) == len(after) - 1 and not any("pr-102" in (i["TagNames"] or []) for i in after2), after2)

    # 12. CreateInstanceToken, 13. DescribeInstanceToken, 14. ModifyInstanceTokenStatus, 15. DeleteInstanceToken
    r = call(post, "CreateInstanceToken", {"InstanceId": DEMO, "TokenType": "Hour", "TokenTime": 2, "Desc": "sdk conformance"})
    token_id = r.get("tokenId")
    check("CreateInstanceToken returns tokenId and a secret", bool(token_id) and bool(r.get("Token")), list(r))
    # The reference's example: `tokenId` in lower camel case, but `RequestId` as everywhere else.
    check("CreateInstanceToken answers RequestId, not requestId", bool(r.get("RequestId")) and "requestId" not in r, list(r))
    tokens = call(get, "DescribeInstanceToken", {"InstanceId": DEMO})["TokenSet"]
    mine = [t for t in tokens if t["TokenId"] == token_id]
    check("DescribeInstanceToken lists it, enabled", len(mine) == 1 and mine[0]["Enable"] is True, tokens)
    call(post, "ModifyInstanceTokenStatus", {"InstanceId": DEMO, "TokenId": token_id, "Enable": False})
    tokens = call(get, "DescribeInstanceToken", {"InstanceId": DEMO})["TokenSet"]
    check("ModifyInstanceTokenStatus disabled it", [t["Enable"] for t in tokens if t["TokenId"] == token_id] == [False], tokens)
    call(post, "DeleteInstanceToken", {"InstanceId": DEMO, "TokenId": token_id})
    tokens = call(get, "DescribeInstanceToken", {"InstanceId": DEMO})["TokenSet"]
    check("DeleteInstanceToken removed it", all(t["TokenId"] != token_id for t in tokens), tokens)

    # Step 9: the SDK-only actions our client calls (read-only). The SDK
    # models DescribeRetentionRule and GetRetentionTrigger; it has no
    # DescribeExternalEndpoint (not in 1.5.8.114: the name is the Go SDK's and
    # the terraform provider's), so that one goes through the SDK's own
    # signed call_judge, as a model would.
    r = call(get, "DescribeRetentionRule", {"InstanceId": DEMO, "Namespace": "apps"})
    check("DescribeRetentionRule (SDK model) answers Data as a list", isinstance(r.get("Data"), list), r)
    r = call(post, "GetRetentionTrigger", {"InstanceId": DEMO, "Namespace": "apps"})
    check("GetRetentionTrigger (SDK model) answers Data", "Data" in r, r)
    r = json.loads(post.call_judge("DescribeExternalEndpoint", {"InstanceId": DEMO}, "application/x-www-form-urlencoded"))
    check(
        "DescribeExternalEndpoint (SDK-signed call) says Opened for loopback",
        r.get("Status") == "Opened" and [p["Entry"] for p in r.get("PolicySet", [])] == ["127.0.0.0/8"],
        r,
    )
    # An action this endpoint does not offer: the SDK raises with the code our
    # client reads as "not supported" (NoSuchEntity), never a failure.
    try:
        call(get, "GetRetentionPolicyLogs", {"InstanceId": DEMO, "Namespace": "apps"})
        check("an action the endpoint does not offer is refused", False, "accepted")
    except KsyunSDKException as e:
        check("an action the endpoint does not offer answers NoSuchEntity", "NoSuchEntity" in str(e), str(e))

    # 16. Parameter validation answered in the SDK's error shape.
    try:
        call(post, "DescribeNamespace", {"InstanceId": DEMO, "MaxResults": 100})
        check("MaxResults=100 refused", False)
    except KsyunSDKException as e:
        check("MaxResults=100 refused with InvalidParameterValue", "InvalidParameterValue" in str(e), str(e))

    # 17. A wrong secret is refused with SignatureDoesNotMatch, over POST and GET.
    for method in ("POST", "GET"):
        bad = make_client(endpoint, ak, sk + "x", method)
        try:
            call(bad, "DescribeInstance", {})
            check(f"wrong secret refused ({method})", False, "request was accepted")
        except KsyunSDKException as e:
            check(f"wrong secret refused with SignatureDoesNotMatch ({method})", "SignatureDoesNotMatch" in str(e), str(e))

    print(f"conformance: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
