#!/usr/bin/env python3
"""Baseline for benches/inventory.rs: what a user would otherwise write — a
sequential inventory with the official Kingsoft Cloud Python SDK (MaxResults=99,
offset pagination). Prints: calls images seconds"""

import json
import sys
import time

from ksyun.client.kcrs.v20211109 import client as kcrs_client
from ksyun.client.kcrs.v20211109 import models
from ksyun.common import credential
from ksyun.common.profile.client_profile import ClientProfile
from ksyun.common.profile.http_profile import HttpProfile


def main():
    endpoint, ak, sk, instance = sys.argv[1:5]
    http = HttpProfile(protocol="http", endpoint=endpoint, reqMethod="GET", reqTimeout=30)
    client = kcrs_client.KcrsClient(credential.Credential(ak, sk), "cn-beijing-6", ClientProfile(httpProfile=http))
    calls = 0

    def listing(action, key, **params):
        nonlocal calls
        marker, items = 0, []
        while True:
            req = getattr(models, action + "Request")()
            for k, v in dict(params, MaxResults=99, Marker=marker).items():
                setattr(req, k, v)
            r = json.loads(getattr(client, action)(req))
            calls += 1
            items += r[key] or []
            marker = r["Marker"]
            if marker == 0 or not r[key]:
                return items

    start = time.monotonic()
    images = 0
    for ns in listing("DescribeNamespace", "NamespaceSet", InstanceId=instance):
        for repo in listing("DescribeRepository", "RepoSet", InstanceId=instance, Namespace=ns["Namespace"]):
            images += len(listing("DescribeImages", "ImageSet", InstanceId=instance,
                                  Namespace=ns["Namespace"], RepoName=repo["RepoName"]))
    print(calls, images, round(time.monotonic() - start, 3))


if __name__ == "__main__":
    main()
