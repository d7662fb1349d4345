"""End-to-end tests of Tollgate with the official Tencent Cloud Python SDK, unchanged.

Run by tests/sdk_e2e.rs against a gateway + stub backend it starts; the environment names the
endpoint and the credentials. Each test asserts what a customer's SDK code would see.
"""

import concurrent.futures
import json
import os
import time
import unittest
import urllib.request

from tencentcloud.common import abstract_client, credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.bda.v20200324 import bda_client, models as bda_models
from tencentcloud.facefusion.v20220927 import facefusion_client, models as ff_models
from tencentcloud.ft.v20200304 import ft_client, models as ft_models
from tencentcloud.ocr.v20181119 import ocr_client, models as ocr_models
from tencentcloud.tiia.v20190529 import tiia_client, models as tiia_models

ENDPOINT = os.environ["TOLLGATE_ENDPOINT"]
STUB = os.environ["TOLLGATE_STUB"]
# "http", or unset: the SDK's default profile (https), trusting TOLLGATE_CA.
PROTOCOL = os.environ.get("TOLLGATE_PROTOCOL")
CA = os.environ.get("TOLLGATE_CA")


def key_of(secret_id):
    return secret_id + "-secret-key"


def client(cls, secret_id, secret_key=None, method="POST"):
    cred = credential.Credential(secret_id, secret_key or key_of(secret_id))
    if PROTOCOL:
        http = HttpProfile(endpoint=ENDPOINT, protocol=PROTOCOL, reqMethod=method)
    else:
        # The SDK's defaults (protocol "https"), with the gateway's certificate trusted.
        http = HttpProfile(endpoint=ENDPOINT, reqMethod=method, certification=CA)
        assert http.scheme == "https", http.scheme
    return cls(cred, "ap-guangzhou", ClientProfile(httpProfile=http))


def ocr_request():
    req = ocr_models.GeneralBasicOCRRequest()
    req.ImageUrl = "https://example.com/a.jpg"
    return req


def stub_stats():
    with urllib.request.urlopen("http://%s/stub/stats" % STUB) as r:
        return json.loads(r.read())


class Success(unittest.TestCase):
    def test_every_product_answers_through_the_sdk(self):
        ocr = client(ocr_client.OcrClient, "AKIDmain").GeneralBasicOCR(ocr_request())
        self.assertEqual(ocr.TextDetections[0].DetectedText, "stub")
        self.assertTrue(ocr.RequestId)

        req = ff_models.FuseFaceRequest()
        req.ProjectId, req.ModelId, req.RspImgType = "p", "m", "base64"
        fused = client(facefusion_client.FacefusionClient, "AKIDmain").FuseFace(req)
        self.assertTrue(fused.FusedImage)

        req = bda_models.SegmentPortraitPicRequest()
        req.Url = "https://example.com/p.jpg"
        seg = client(bda_client.BdaClient, "AKIDmain").SegmentPortraitPic(req)
        self.assertTrue(seg.ResultImage)

        req = tiia_models.DetectLabelProRequest()
        req.ImageUrl = "https://example.com/t.jpg"
        self.assertTrue(client(tiia_client.TiiaClient, "AKIDmain").DetectLabelPro(req).RequestId)

        req = ft_models.SwapGenderPicRequest()
        req.Url = "https://example.com/f.jpg"
        self.assertTrue(client(ft_client.FtClient, "AKIDmain").SwapGenderPic(req).ResultImage)

    def test_a_get_signed_call(self):
        resp = client(ocr_client.OcrClient, "AKIDmain", method="GET").GeneralBasicOCR(ocr_request())
        self.assertEqual(resp.TextDetections[0].DetectedText, "stub")

    def test_a_mixed_invoice_call(self):
        req = ocr_models.MixedInvoiceOCRRequest()
        req.ImageUrl = "https://example.com/m.jpg"
        req.Types = [3, 8, 2]
        req.headers = {"X-Stub-Invoices": "3:OK,8:OK,2:OK"}
        resp = client(ocr_client.OcrClient, "AKIDmain").MixedInvoiceOCR(req)
        self.assertEqual([i.Type for i in resp.MixedInvoiceItems], [3, 8, 2])


class Limits(unittest.TestCase):
    def test_request_limit_exceeded_after_the_burst(self):
        c = client(ocr_client.OcrClient, "AKIDsubB")
        codes = []
        for _ in range(40):
            try:
                c.GeneralBasicOCR(ocr_request())
                codes.append("ok")
            except TencentCloudSDKException as e:
                codes.append(e.code)
                self.assertTrue(e.requestId, "the SDK needs a RequestId to raise")
        self.assertIn("RequestLimitExceeded", codes)
        # A 20 QPS bucket admits its burst of 20, plus what refills while the loop runs.
        self.assertGreaterEqual(codes.count("ok"), 20)
        self.assertEqual(codes[:20], ["ok"] * 20)

    def test_fuse_face_ultra_is_limited_to_ten_in_flight(self):
        def one(_):
            c = client(facefusion_client.FacefusionClient, "AKIDsubA")
            req = ff_models.FuseFaceUltraRequest()
            req.RspImgType = "url"
            req.headers = {"X-Stub-Latency-Ms": "1500"}
            try:
                c.FuseFaceUltra(req)
                return "ok"
            except TencentCloudSDKException as e:
                return e.code

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            results = list(pool.map(one, range(40)))
        self.assertGreaterEqual(results.count("ok"), 10, results)
        self.assertEqual(results.count("ok") + results.count("RequestLimitExceeded"), 40, results)
        self.assertLessEqual(stub_stats()["actions"]["FuseFaceUltra"]["max_in_flight"], 10)


class AuthFailures(unittest.TestCase):
    def assert_code(self, code, fn):
        with self.assertRaises(TencentCloudSDKException) as ctx:
            fn()
        self.assertEqual(ctx.exception.code, code)
        self.assertTrue(ctx.exception.requestId)

    def test_signature_expire(self):
        real_time = time.time

        class Skewed:
            @staticmethod
            def time():
                return real_time() - 600

            def __getattr__(self, name):
                return getattr(time, name)

        abstract_client.time = Skewed()
        try:
            self.assert_code(
                "AuthFailure.SignatureExpire",
                lambda: client(ocr_client.OcrClient, "AKIDmain").GeneralBasicOCR(ocr_request()),
            )
        finally:
            abstract_client.time = time

    def test_secret_id_not_found(self):
        self.assert_code(
            "AuthFailure.SecretIdNotFound",
            lambda: client(ocr_client.OcrClient, "AKIDnobody").GeneralBasicOCR(ocr_request()),
        )

    def test_signature_failure(self):
        self.assert_code(
            "AuthFailure.SignatureFailure",
            lambda: client(ocr_client.OcrClient, "AKIDmain", "a-wrong-secret-key-0000")
            .GeneralBasicOCR(ocr_request()),
        )

    def test_invalid_authorization(self):
        c = client(ocr_client.OcrClient, "AKIDmain")
        original = c._build_req_with_tc3_signature

        def broken(action, params, req, options=None):
            original(action, params, req, options)
            req.header["Authorization"] = "TC3-HMAC-SHA256 Credential=AKIDmain/garbage"

        c._build_req_with_tc3_signature = broken
        self.assert_code("AuthFailure.InvalidAuthorization", lambda: c.GeneralBasicOCR(ocr_request()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
