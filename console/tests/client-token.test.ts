// d. A payment client token in a merchant's page (another origin, allowed in
//    PAYGATE_GRPC_WEB_ALLOWED_ORIGINS) watches its payment reach PAID live over gRPC-Web; the
//    same token is refused for another payment, any list, any write, and after it expires.
// e. With no CORS origins configured, the browser refuses the same page's cross-origin call.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import type { Page } from "playwright-core";
import {
  PHONE,
  checkout,
  clients,
  closeBrowser,
  createMerchant,
  newPage,
  pay,
  shot,
  startPageServer,
  startPaygate,
  startSim,
  testChannel,
  type Paygate,
  type Sim,
} from "./support";

const PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Shop checkout</title><style>body{font:16px system-ui,sans-serif;margin:24px}#status{font-size:28px;font-weight:700}</style></head>
<body><h1>Your order</h1><p>Payment status: <span id="status">waiting…</span></p><ol id="log"></ol>
<script type="module" src="/probe.js"></script></body></html>`;

let shop: Awaited<ReturnType<typeof startPageServer>>;
let sim: Sim;
const open: Paygate[] = [];

before(async () => {
  const probe = readFileSync(process.env.PAYGATE_PROBE_JS ?? "target/browser-tests/probe.js");
  [shop, sim] = await Promise.all([
    startPageServer({ "/": { type: "text/html", body: PAGE }, "/probe.js": { type: "text/javascript", body: probe } }),
    startSim(),
  ]);
});
after(async () => {
  await closeBrowser();
  open.forEach((pg) => pg.stop());
  shop?.stop();
  sim?.stop();
});

async function merchantWithChannel(pg: Paygate): Promise<string> {
  const { apiKey } = createMerchant(pg, "Shop");
  await testChannel(pg, sim, apiKey, "pw-test");
  return apiKey;
}

async function openShop(page: Page, settings: Record<string, string>): Promise<void> {
  await page.goto(`${shop.origin}/#${encodeURIComponent(JSON.stringify(settings))}`);
  await page.waitForFunction(() => "probe" in window);
}

const probe = (page: Page, name: string) =>
  page.evaluate((n) => (window as unknown as { probe: { call: (n: string) => Promise<{ code: string; message: string }> } }).probe.call(n), name);

test("a client token watches its payment reach PAID from another origin, and may do nothing else", async () => {
  const ttlMs = 6000;
  const pg = await startPaygate({ PAYGATE_GRPC_WEB_ALLOWED_ORIGINS: shop.origin, PAYGATE_CLIENT_TOKEN_TTL_MS: String(ttlMs) });
  open.push(pg);
  const apiKey = await merchantWithChannel(pg);
  const [mine, other] = [await checkout(pg, apiKey, "pw-test"), await checkout(pg, apiKey, "pw-test")];
  const { payments } = clients(pg, apiKey);
  const token = await payments.createPaymentClientToken({ paymentId: mine.paymentId });
  const made = Date.now();
  assert.match(token.token, /^pct_/);

  const page = await newPage(PHONE);
  await openShop(page, { base: pg.grpc, token: token.token, paymentId: mine.paymentId, otherPaymentId: other.paymentId, channelKey: "pw-test" });
  await page.locator('#status[data-status="READY"]').waitFor();
  await shot(page, "d1-shop-ready");
  await pay(sim, mine.redirectUrl);
  await page.locator('#status[data-status="PAID"]').waitFor();
  await shot(page, "d2-shop-paid");

  assert.deepEqual(await probe(page, "getOwn"), { code: "OK", message: "" });
  const refused = ["PermissionDenied", "Unauthenticated"];
  for (const name of ["getOther", "getByMerchantUid", "list", "events", "watchOther", "watchAll", "refund", "checkout", "newToken"]) {
    const { code, message } = await probe(page, name);
    assert.ok(refused.includes(code), `${name}: ${code} ${message}`);
  }
  // Past its lifetime the token is refused even for its own payment.
  await page.waitForTimeout(Math.max(0, made + ttlMs + 500 - Date.now()));
  const expired = await probe(page, "getOwn");
  assert.equal(expired.code, "Unauthenticated", expired.message);
  assert.match(expired.message, /expired/);
  // The stream opened while it was good ends at its expiry, and a new one is refused.
  const ended = page.getByText(/stream ended: Unauthenticated/);
  await ended.first().waitFor();
  await page.evaluate(() => (window as unknown as { probe: { watch: () => Promise<void> } }).probe.watch());
  await page.waitForFunction(() => document.querySelectorAll("#log li").length >= 4);
  assert.equal(await ended.count(), 2);
  await shot(page, "d3-shop-token-expired");
  await page.context().close();
});

test("with no CORS origins configured, the browser refuses a cross-origin call", async () => {
  const pg = await startPaygate();
  open.push(pg);
  const apiKey = await merchantWithChannel(pg);
  const session = await checkout(pg, apiKey, "pw-test");
  const token = await clients(pg, apiKey).payments.createPaymentClientToken({ paymentId: session.paymentId });
  // The same call works from outside a browser (no CORS there), so only the browser refuses.
  const direct = await fetch(`${pg.grpc}/paygate.v1.PaymentService/GetPayment`, {
    method: "OPTIONS",
    headers: { origin: shop.origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type,x-grpc-web" },
  });
  assert.equal(direct.headers.get("access-control-allow-origin"), null);

  const page = await newPage();
  const failures: string[] = [];
  page.on("console", (m) => m.type() === "error" && failures.push(m.text()));
  await openShop(page, { base: pg.grpc, token: token.token, paymentId: session.paymentId, otherPaymentId: "", channelKey: "" });
  await page.locator("#status[data-error]").waitFor();
  const { code, message } = await probe(page, "getOwn");
  assert.notEqual(code, "OK");
  assert.match(message, /fetch/i, message);
  assert.ok(failures.some((f) => /CORS/.test(f)), `the browser says why: ${failures.join(" | ")}`);
  await shot(page, "e1-cross-origin-refused");
  await page.context().close();
});
