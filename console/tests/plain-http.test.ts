// f. The console over plain HTTP on a non-loopback address (as operators open the internal port,
//    e.g. http://10.0.0.5:50051/console): not a secure context, so APIs such as crypto.randomUUID
//    are missing. A refund from the detail view still works there.

import assert from "node:assert/strict";
import { networkInterfaces } from "node:os";
import { after, before, test } from "node:test";
import { PaymentStatus } from "../src/gen/paygate/v1/payments_pb";
import {
  checkout,
  closeBrowser,
  createMerchant,
  newPage,
  pay,
  shot,
  signIn,
  startPaygate,
  startSim,
  testChannel,
  waitStatus,
  type Paygate,
  type Sim,
} from "./support";

/** This machine's first IPv4 address that is not loopback (what `hostname -I` lists first), if any. */
function lanAddress(): string | undefined {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return undefined;
}

const address = lanAddress();
const skip = address ? false : "this machine has no IPv4 address besides loopback to open the console on";

let pg: Paygate;
let sim: Sim;
let apiKey: string;

before(async () => {
  if (!address) return;
  // The gRPC port (and /console) on that address; pingbacks still come to loopback.
  [pg, sim] = await Promise.all([startPaygate({ PAYGATE_GRPC_ADDR: `${address}:0` }), startSim()]);
  apiKey = createMerchant(pg, "Acme").apiKey;
  await testChannel(pg, sim, apiKey, "pw-test");
});
after(async () => {
  await closeBrowser();
  pg?.stop();
  sim?.stop();
});

test("over plain HTTP on a non-loopback address, a refund from the detail view is sent and shows CANCEL_PENDING", { skip }, async () => {
  assert.match(pg.grpc, new RegExp(`^http://${address!.replaceAll(".", "\\.")}:\\d+$`));
  const session = await checkout(pg, apiKey, "pw-test", 1500n);
  await pay(sim, session.redirectUrl);
  await waitStatus(pg, apiKey, session.paymentId, PaymentStatus.PAID);
  // The type 2 pingback comes late, so CANCEL_PENDING is seen first.
  assert.ok((await sim.control("behaviour", { ticket_pingbacks: true, ticket_pingback_delay_ms: 2500 })).ok);

  const page = await newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await signIn(page, pg, apiKey, `#/payments/${session.paymentId}`);
  assert.equal(await page.evaluate(() => window.isSecureContext), false, "the page is not a secure context");
  assert.equal(await page.evaluate(() => typeof crypto.randomUUID), "undefined", "randomUUID is missing here");
  const summary = page.locator("section").filter({ has: page.getByRole("heading", { name: "Summary" }) });
  await summary.locator('[data-status="PAID"]').waitFor();

  await page.getByLabel("Reason").fill("customer asked");
  await page.getByRole("button", { name: "Refund…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Refund USD 15.00" }).click();
  await page.getByRole("alert").filter({ hasText: "requested" }).waitFor();
  await summary.locator('[data-status="CANCEL_PENDING"]').waitFor();
  await shot(page, "f1-plain-http-refund");
  await summary.locator('[data-status="CANCELLED"]').waitFor({ timeout: 20_000 });
  assert.deepEqual(errors, [], "no script error on the page");
  await page.context().close();
});
