"""A month of image search through the official Tencent Cloud Python SDK, unchanged.

Run by tests/sdk_e2e.rs against a gateway + stub backend it starts. Creates a similar-image
library (GroupType 6) and a same-image one (GroupType 1) with CreateGroup, then makes
TOLLGATE_SEARCHES SearchImage calls into the type-6 library and as many into the type-1 one
(in that order), from TOLLGATE_PROCESSES processes. The Rust side prices the month with
`tollgate statement` and checks it against the seed's tables.
"""

import concurrent.futures
import os
import sys
import time

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.tiia.v20190529 import tiia_client, models

ENDPOINT = os.environ["TOLLGATE_ENDPOINT"]
SEARCHES = int(os.environ.get("TOLLGATE_SEARCHES", "100000"))
PROCESSES = int(os.environ.get("TOLLGATE_PROCESSES", "4"))


def client():
    cred = credential.Credential("AKIDsubA", "AKIDsubA-secret-key")
    http = HttpProfile(endpoint=ENDPOINT, protocol="http")
    return tiia_client.TiiaClient(cred, "ap-guangzhou", ClientProfile(httpProfile=http))


def create(group_id, group_type):
    req = models.CreateGroupRequest()
    req.GroupId = group_id
    req.GroupName = group_id
    req.MaxCapacity = 100000
    req.GroupType = group_type
    client().CreateGroup(req)


def searches(args):
    group_id, n = args
    c = client()
    req = models.SearchImageRequest()
    req.GroupId = group_id
    req.ImageUrl = "https://example.com/query.jpg"
    failures = {}
    for _ in range(n):
        try:
            resp = c.SearchImage(req)
            assert resp.RequestId
        except TencentCloudSDKException as e:
            failures[e.code] = failures.get(e.code, 0) + 1
    return failures


def run(group_id):
    shares = [SEARCHES // PROCESSES + (1 if i < SEARCHES % PROCESSES else 0) for i in range(PROCESSES)]
    failed = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=PROCESSES) as pool:
        for f in pool.map(searches, [(group_id, s) for s in shares]):
            for code, n in f.items():
                failed[code] = failed.get(code, 0) + n
    return failed


def main():
    create("patterns_2026", 6)
    create("catalogue_2026", 1)
    # DescribeGroups answers the types as the backend holds them.
    req = models.DescribeGroupsRequest()
    req.Limit = 10
    groups = {g.GroupId: g.GroupType for g in client().DescribeGroups(req).Groups}
    assert groups == {"patterns_2026": 6, "catalogue_2026": 1}, groups
    started = time.time()
    for group_id in ("patterns_2026", "catalogue_2026"):
        failed = run(group_id)
        if failed:
            print("SearchImage into %s failed: %s" % (group_id, failed), file=sys.stderr)
            sys.exit(1)
    took = time.time() - started
    print(
        "image search month: %d + %d SearchImage calls in %.1f s (%.0f/s)"
        % (SEARCHES, SEARCHES, took, 2 * SEARCHES / took),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
