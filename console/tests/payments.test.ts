// b. The live view: a checkout and its pingback, made by the test, appear with no reload.
// c. A refund from the detail view: confirmed, CANCEL_PENDING, then CANCELLED after the type 2
//    pingback, live. Also the list and its filters.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DeliveryState, DeliveryStatus, DeliveryType, PaymentStatus } from "../src/gen/paygate/v1/payments_pb";
import {
  PHONE,
  checkout,
  clients,
  closeBrowser,
  createMerchant,
  markDocument,
  newPage,
  pay,
  paySilently,
  shot,
  signIn,
  startPaygate,
  startSim,
  testChannel,
  waitStatus,
  type Paygate,
  type Sim,
} from "./support";

let pg: Paygate;
let sim: Sim;
let apiKey: string;

before(async () => {
  [pg, sim] = await Promise.all([startPaygate(), startSim()]);
  apiKey = createMerchant(pg, "Acme").apiKey;
  await testChannel(pg, sim, apiKey, "pw-test");
});
after(async () => {
  await closeBrowser();
  pg?.stop();
  sim?.stop();
});

test("the live view shows a new checkout, then the same row PAID after the pingback, with no reload", async () => {
  const page = await newPage();
  await signIn(page, pg, apiKey, "#/live");
  await page.locator('.live-state[data-connected="true"]').waitFor();
  const noReload = await markDocument(page);

  const session = await checkout(pg, apiKey, "pw-test");
  const row = page.locator(`tr[data-payment-id="${session.paymentId}"]`);
  await row.locator('[data-status="READY"]').waitFor();
  await shot(page, "b1-live-ready");
  await pay(sim, session.redirectUrl);
  await row.locator('[data-status="PAID"]').waitFor();
  assert.equal(await row.count(), 1, "the same row changed; no second row");
  assert.ok(await noReload(), "the page was never reloaded");
  await shot(page, "b2-live-paid");

  const phone = await newPage(PHONE);
  await signIn(phone, pg, apiKey, "#/live");
  await phone.locator(`tr[data-payment-id="${session.paymentId}"] [data-status="PAID"]`).waitFor();
  await shot(phone, "b3-phone-live");
  await phone.context().close();
  await page.context().close();
});

test("a refund from the detail view: confirmed, CANCEL_PENDING, then CANCELLED after the type 2 pingback", async () => {
  const session = await checkout(pg, apiKey, "pw-test", 2500n);
  await pay(sim, session.redirectUrl);
  await waitStatus(pg, apiKey, session.paymentId, PaymentStatus.PAID);
  // Paymentwall answers the ticket at once and sends the type 2 pingback a while later.
  const slow = await sim.control("behaviour", { ticket_pingbacks: true, ticket_pingback_delay_ms: 2500 });
  assert.ok(slow.ok);

  const page = await newPage();
  await signIn(page, pg, apiKey, "#/payments");
  // The list, filtered to PAID, leads to the detail.
  await page.getByLabel("Status").selectOption({ label: "PAID" });
  await page.getByRole("button", { name: "Apply filters" }).click();
  await page.getByRole("link", { name: session.paymentId }).click();
  const summary = page.locator("section").filter({ has: page.getByRole("heading", { name: "Summary" }) });
  await summary.locator('[data-status="PAID"]').waitFor();
  await page.locator('.live-state[data-connected="true"]').waitFor();
  const noReload = await markDocument(page);
  await shot(page, "c1-detail-paid");

  // Cancelling the confirmation sends nothing.
  await page.getByLabel("Reason").fill("customer asked");
  await page.getByRole("button", { name: "Refund…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
  await page.waitForTimeout(300);
  await summary.locator('[data-status="PAID"]').waitFor();

  await page.getByLabel("Amount").fill("25.00");
  await page.getByRole("button", { name: "Refund…" }).click();
  const dialog = page.getByRole("dialog");
  assert.match(await dialog.innerText(), /USD 25\.00/);
  await shot(page, "c2-refund-confirm");
  await dialog.getByRole("button", { name: "Refund USD 25.00" }).click();
  await summary.locator('[data-status="CANCEL_PENDING"]').waitFor();
  await page.getByRole("alert").filter({ hasText: "requested" }).waitFor();
  await shot(page, "c3-cancel-pending");
  await summary.locator('[data-status="CANCELLED"]').waitFor({ timeout: 20_000 });
  assert.ok(await noReload(), "the page was never reloaded");
  const cancellations = page.locator("section").filter({ has: page.getByRole("heading", { name: "Cancellations" }) });
  await cancellations.getByText("SUCCEEDED").waitFor();
  const events = page.locator("section").filter({ has: page.getByRole("heading", { name: "Events" }) });
  await events.locator('[data-status="CANCELLED"]').waitFor();
  await shot(page, "c4-cancelled");

  const phone = await newPage(PHONE);
  await signIn(phone, pg, apiKey, `#/payments/${session.paymentId}`);
  await phone.locator('[data-status="CANCELLED"]').first().waitFor();
  await shot(phone, "c5-phone-detail");
  await phone.context().close();
  await page.context().close();
});

test("Check with provider: a payment paid at Paymentwall whose pingback was lost turns PAID at a click", async () => {
  const session = await checkout(pg, apiKey, "pw-test", 1200n);
  await paySilently(sim, session.redirectUrl);
  const page = await newPage();
  await signIn(page, pg, apiKey, `#/payments/${session.paymentId}`);
  const summary = page.locator("section").filter({ has: page.getByRole("heading", { name: "Summary" }) });
  await summary.locator('[data-status="READY"]').waitFor();
  await page.getByRole("button", { name: "Check with provider" }).click();
  await page.getByRole("alert").filter({ hasText: "Paymentwall: paid" }).waitFor();
  await summary.locator('[data-status="PAID"]').waitFor();
  const events = page.locator("section").filter({ has: page.getByRole("heading", { name: "Events" }) });
  await events.getByText("payment.synced").waitFor();
  await shot(page, "c6-checked-with-provider");
  await page.context().close();
});

test("a delivery confirmed through the API shows on the payment, sent to Paymentwall", async () => {
  const session = await checkout(pg, apiKey, "pw-test", 1500n);
  await pay(sim, session.redirectUrl);
  await waitStatus(pg, apiKey, session.paymentId, PaymentStatus.PAID);
  const { payments } = clients(pg, apiKey);
  const sent = await payments.confirmDelivery({
    paymentId: session.paymentId,
    type: DeliveryType.PHYSICAL,
    status: DeliveryStatus.ORDER_SHIPPED,
    trackingId: "1Z999AA10123456784",
    carrier: "UPS",
    estimatedDeliveryAt: timestampFromDate(new Date("2027-01-15T08:00:00Z")),
    details: "Shipped by UPS ground",
  });
  assert.equal(sent.state, DeliveryState.SENT);
  const page = await newPage();
  await signIn(page, pg, apiKey, `#/payments/${session.paymentId}`);
  const section = page.locator("section").filter({ has: page.getByRole("heading", { name: "Delivery" }) });
  const row = section.locator("tr").filter({ hasText: sent.deliveryId });
  await row.locator('[data-delivery-state="SENT"]').waitFor();
  assert.match(await row.innerText(), /shipped/);
  assert.match(await row.innerText(), /UPS 1Z999AA10123456784/);
  await shot(page, "c7-delivery-confirmed");
  await page.context().close();
});
