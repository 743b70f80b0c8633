// a. The seeds' set-up, through the console only: sign in, add a TEST channel, set the webhook
// URL and send a test webhook that a local receiver gets, add an allowlist block, create and
// revoke a key.

import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  PHONE,
  PROJECT_KEY,
  SECRET_KEY,
  clients,
  closeBrowser,
  createMerchant,
  newPage,
  shot,
  signIn,
  signatureValid,
  startPaygate,
  startReceiver,
  startSim,
  type Paygate,
  type Sim,
} from "./support";

let pg: Paygate;
let sim: Sim;
let receiver: Awaited<ReturnType<typeof startReceiver>>;

before(async () => {
  [pg, sim, receiver] = await Promise.all([startPaygate(), startSim(), startReceiver()]);
});
after(async () => {
  await closeBrowser();
  pg?.stop();
  sim?.stop();
  receiver?.stop();
});

test("a refused credential is said in words, and the console is served with its own types", async () => {
  const page = await newPage();
  const res = await page.goto(`${pg.grpc}/console`);
  assert.equal(res?.status(), 200);
  assert.match(res!.headers()["content-type"], /^text\/html/);
  assert.match(res!.headers()["content-security-policy"], /default-src 'none'/);
  const js = await page.request.get(`${pg.grpc}/console/app.js`);
  assert.match(js.headers()["content-type"], /^text\/javascript/);
  // Sent as written (a browser would normalise the dots away): nothing outside the console's files.
  for (const path of ["/console/../Cargo.toml", "/console/%2e%2e/Cargo.toml", "/console/..%2fsrc%2fmain.rs"]) {
    assert.equal(await rawStatus(pg.grpc, path), 404, path);
  }
  // Keyboard only: the credential field has the focus, Tab reaches the merchant field, Enter submits.
  await page.keyboard.type("pgk_notakeynotakeynotakeynotakeynot");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("name")), "merchant_id");
  await page.keyboard.press("Enter");
  const alert = page.getByRole("alert").filter({ hasText: "not accepted" });
  await alert.waitFor();
  assert.doesNotMatch(await alert.innerText(), /\bcode\b|\b16\b|UNAUTHENTICATED/);
  await shot(page, "a0-sign-in-refused");
  await page.context().close();
});

test("the seeds' set-up: TEST channel, webhook and test send, allowlist block, key create and revoke", async () => {
  const { merchantId, apiKey } = createMerchant(pg, "Acme");
  const page = await newPage();
  await signIn(page, pg, apiKey, "#/channels");
  // The key is in memory only: no cookie, nothing in web storage.
  assert.deepEqual(await page.context().cookies(), []);
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0);

  // A TEST channel card, with the secret key written and never shown.
  await page.getByRole("button", { name: "Add test channel" }).click();
  await page.getByLabel("Channel key").fill("pw-test");
  await page.getByLabel("Name").fill("Paymentwall test");
  await page.getByLabel("Project key").fill(PROJECT_KEY);
  await page.getByLabel("Secret key").fill(SECRET_KEY);
  await page.getByLabel("Pingback allowlist").fill("127.0.0.1/32");
  await page.getByLabel("API base URL").fill("not a url");
  await page.getByRole("button", { name: "Create channel" }).click();
  const violation = page.getByRole("alert").filter({ hasText: "paymentwall.api_base_url" });
  await violation.waitFor();
  assert.equal(await page.getByLabel("API base URL").getAttribute("aria-invalid"), "true");
  await shot(page, "a1-channel-field-violation");
  await page.getByLabel("API base URL").fill(sim.url);
  await page.getByRole("button", { name: "Create channel" }).click();
  const card = page.locator('[data-channel-key="pw-test"]');
  await card.waitFor();
  assert.match(await card.innerText(), /TEST/);
  assert.ok(!(await page.content()).includes(SECRET_KEY), "the secret key is nowhere in the page");
  // Edit: a new name only; the secret field starts empty and stays write-only.
  await page.getByRole("button", { name: "Edit Paymentwall test" }).click();
  assert.equal(await page.getByLabel("Secret key").inputValue(), "");
  await page.getByLabel("Name").fill("Paymentwall sandbox");
  await page.getByRole("button", { name: "Save changes" }).click();
  await card.getByText("Paymentwall sandbox").waitFor();
  await shot(page, "a2-channels");
  const channel = await clients(pg, apiKey).channels.getChannel({ channelKey: "pw-test" });
  assert.equal(channel.name, "Paymentwall sandbox");
  assert.equal(channel.paymentwall?.projectKey, PROJECT_KEY);

  // Webhooks: the URL, its secret shown once, a test send the receiver gets, the delivery log.
  await page.getByRole("link", { name: "Webhooks" }).click();
  await page.getByLabel("Webhook URL").fill(receiver.url);
  await page.getByRole("button", { name: /^Save endpoint/ }).click();
  const secret = await page.locator('[data-secret="webhook"]').innerText();
  assert.match(secret, /^whsec_/);
  await shot(page, "a3-webhook-secret-once");
  await page.getByRole("button", { name: "Send test webhook" }).click();
  const hook = await receiver.next();
  assert.ok(signatureValid(hook, secret), "signed with the secret the console showed");
  assert.equal(JSON.parse(hook.body).type, "webhook.test");
  await page.getByRole("button", { name: "Refresh" }).click();
  await page.locator('[data-delivery-status="SUCCEEDED"]').first().waitFor();
  await page.getByText(/1 attempt/).first().click();
  await shot(page, "a4-webhook-delivery-log");
  // Shown once: after a reload of the page the secret is gone (and so is the sign-in).
  await page.getByRole("link", { name: "Channels" }).click();
  await page.getByRole("link", { name: "Webhooks" }).click();
  await page.getByText(receiver.url).first().waitFor();
  assert.ok(!(await page.content()).includes(secret), "the signing secret is not shown again");

  // Settings: a bare address is refused with the form to write, then a block is added.
  await page.getByRole("link", { name: "Settings" }).click();
  await page.getByLabel("CIDR block").fill("127.0.0.1");
  await page.getByRole("button", { name: "Add block" }).click();
  const refused = page.getByRole("alert").filter({ hasText: "cidr_blocks" });
  await refused.waitFor();
  assert.match(await refused.innerText(), /\/32/);
  await shot(page, "a5-allowlist-refused");
  await page.getByLabel("CIDR block").fill("127.0.0.0/8");
  await page.getByRole("button", { name: "Add block" }).click();
  await page.locator("ul.blocks").getByText("127.0.0.0/8").waitFor();

  // A key, shown once; it works; revoked (after the confirmation) it no longer does.
  await page.getByLabel("Key name").fill("batch jobs");
  await page.getByRole("button", { name: "Create key" }).click();
  const newKey = await page.locator('[data-secret="api-key"]').innerText();
  assert.match(newKey, /^pgk_/);
  await clients(pg, newKey).channels.listChannels({});
  await shot(page, "a6-settings-key-created");
  await page.getByRole("button", { name: "Revoke batch jobs" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Revoke key" }).click();
  await page.locator('[data-key-state="revoked"]').waitFor();
  await assert.rejects(clients(pg, newKey).channels.listChannels({}), (e) => ConnectError.from(e).code === Code.Unauthenticated);
  await page.getByRole("button", { name: "Refresh" }).last().click();
  await page.getByRole("cell", { name: "api_key.revoked" }).first().waitFor();
  await shot(page, "a7-settings-revoked-audit");

  // The same pages at phone width.
  const phone = await newPage(PHONE);
  await signIn(phone, pg, apiKey, "#/channels");
  await phone.locator('[data-channel-key="pw-test"]').waitFor();
  await shot(phone, "a8-phone-channels");
  await phone.getByRole("link", { name: "Settings" }).click();
  await phone.getByRole("cell", { name: "api_key.revoked" }).first().waitFor();
  await shot(phone, "a9-phone-settings");
  await phone.context().close();

  // The admin token signs in for a named merchant and sees its settings only.
  const admin = await newPage();
  await signIn(admin, pg, pg.env.PAYGATE_ADMIN_TOKEN, "", merchantId);
  await admin.locator("ul.blocks").getByText("127.0.0.0/8").waitFor();
  assert.equal(await admin.getByRole("link", { name: "Payments" }).count(), 0);
  await shot(admin, "a10-admin-settings");
  await admin.context().close();
  await page.context().close();
});

function rawStatus(base: string, path: string): Promise<number | undefined> {
  const { hostname, port } = new URL(base);
  return new Promise((ok, fail) => request({ hostname, port, path }, (res) => (res.resume(), ok(res.statusCode))).on("error", fail).end());
}
