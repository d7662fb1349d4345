// End-to-end tests of Tollgate with the official Tencent Cloud Node.js SDK, unchanged.
//
// Run by tests/sdk_e2e.rs against a gateway + stub backend it starts, on a non-default port,
// over plain HTTP (TOLLGATE_PROTOCOL=http://) and HTTPS (https://, the SDK's default, with
// the gateway's certificate trusted through NODE_EXTRA_CA_CERTS). The endpoint is an IP
// literal (`127.0.0.1:PORT`): the SDK signs the scope's service `127` and the Host without
// its port, both of which the gateway accepts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const tencentcloud = require("tencentcloud-sdk-nodejs-ocr");
const OcrClient = tencentcloud.ocr.v20181119.Client;

const ENDPOINT = process.env.TOLLGATE_ENDPOINT;
const PROTOCOL = process.env.TOLLGATE_PROTOCOL || "https://";

function client(secretId, { secretKey, reqMethod = "POST" } = {}) {
  return new OcrClient({
    credential: { secretId, secretKey: secretKey || `${secretId}-secret-key` },
    region: "ap-guangzhou",
    profile: { httpProfile: { endpoint: ENDPOINT, protocol: PROTOCOL, reqMethod } },
  });
}

const image = { ImageUrl: "https://example.com/a.jpg" };

async function codeOf(promise) {
  try {
    await promise;
    return "ok";
  } catch (e) {
    assert.ok(e.requestId, `a RequestId with ${e.code}`);
    return e.code;
  }
}

test("a call succeeds", async () => {
  const r = await client("AKIDmain").GeneralBasicOCR(image);
  assert.equal(r.TextDetections[0].DetectedText, "stub");
  assert.ok(r.RequestId);
});

test("a GET-signed call succeeds", async () => {
  const r = await client("AKIDmain", { reqMethod: "GET" }).GeneralBasicOCR(image);
  assert.equal(r.TextDetections[0].DetectedText, "stub");
});

test("each AuthFailure", async () => {
  assert.equal(await codeOf(client("AKIDnobody").GeneralBasicOCR(image)), "AuthFailure.SecretIdNotFound");
  assert.equal(
    await codeOf(client("AKIDmain", { secretKey: "a-wrong-secret-key-0000" }).GeneralBasicOCR(image)),
    "AuthFailure.SignatureFailure",
  );
  // A SecretId that breaks the Credential field's shape (it holds "/").
  assert.equal(await codeOf(client("AKID/main").GeneralBasicOCR(image)), "AuthFailure.InvalidAuthorization");
  // A clock ten minutes slow: the SDK stamps X-TC-Timestamp from `new Date()`.
  const RealDate = Date;
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(RealDate.now() - 600_000);
      else super(...args);
    }
    static now() {
      return RealDate.now() - 600_000;
    }
  };
  try {
    assert.equal(await codeOf(client("AKIDmain").GeneralBasicOCR(image)), "AuthFailure.SignatureExpire");
  } finally {
    globalThis.Date = RealDate;
  }
});

test("RequestLimitExceeded after the burst", async () => {
  const c = client("AKIDsubB");
  const codes = [];
  for (let i = 0; i < 40; i++) codes.push(await codeOf(c.GeneralBasicOCR(image)));
  assert.ok(codes.includes("RequestLimitExceeded"), codes.join(","));
  assert.deepEqual(codes.slice(0, 20), Array(20).fill("ok"));
});

test("a mixed invoice call", async () => {
  const c = client("AKIDmain");
  // The stub recognises invoices of types 3 (大票), 8 and 2 (小票): 1 + 2 units.
  const r = await c.MixedInvoiceOCR({ ImageUrl: "https://example.com/m.jpg", Types: [3, 8] });
  assert.ok(Array.isArray(r.MixedInvoiceItems));
  assert.ok(r.MixedInvoiceItems.length > 0);
});
