// A merchant's checkout page, as the browser tests serve it from an origin of their own: it
// watches one payment over gRPC-Web with a payment client token (never an API key), and lets the
// test try calls the token must not make. Settings come in the URL's fragment as JSON.

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { PaymentService, PaymentStatus } from "../src/gen/paygate/v1/payments_pb";

type Settings = { base: string; token: string; paymentId: string; otherPaymentId: string; channelKey: string };
const settings: Settings = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const transport = createGrpcWebTransport({ baseUrl: settings.base });
const payments = createClient(PaymentService, transport);
const headers = { authorization: `Bearer ${settings.token}` };
const status = document.getElementById("status") as HTMLElement;
const log = document.getElementById("log") as HTMLElement;

function say(line: string): void {
  log.append(Object.assign(document.createElement("li"), { textContent: line }));
}

async function watch(): Promise<void> {
  try {
    for await (const event of payments.watchPayments({ paymentIds: [settings.paymentId] }, { headers })) {
      const name = PaymentStatus[event.payment?.status ?? 0];
      status.textContent = name;
      status.dataset.status = name;
      say(`${event.snapshot ? "now" : "changed"}: ${name}`);
    }
  } catch (err) {
    const e = ConnectError.from(err);
    status.dataset.error = Code[e.code];
    say(`stream ended: ${Code[e.code]} ${e.rawMessage}`);
  }
}

const calls: Record<string, () => Promise<unknown>> = {
  getOwn: () => payments.getPayment({ lookup: { case: "paymentId", value: settings.paymentId } }, { headers }),
  getOther: () => payments.getPayment({ lookup: { case: "paymentId", value: settings.otherPaymentId } }, { headers }),
  getByMerchantUid: () => payments.getPayment({ lookup: { case: "merchantUid", value: "order-1" } }, { headers }),
  list: () => payments.listPayments({}, { headers }),
  events: () => payments.listPaymentEvents({ paymentId: settings.paymentId }, { headers }),
  watchOther: async () => {
    for await (const _ of payments.watchPayments({ paymentIds: [settings.otherPaymentId] }, { headers })) return;
  },
  watchAll: async () => {
    for await (const _ of payments.watchPayments({}, { headers })) return;
  },
  refund: () => payments.refundPayment({ paymentId: settings.paymentId, reason: "from a browser" }, { headers }),
  checkout: () =>
    payments.createCheckoutSession(
      { channelKey: settings.channelKey, merchantUid: "from-a-browser", amount: { amountMinor: 100n, currency: "USD" }, customer: { uid: "x" } },
      { headers },
    ),
  newToken: () => payments.createPaymentClientToken({ paymentId: settings.paymentId }, { headers }),
};

/** Runs one call; "OK" or the status code's name, and what the browser or server said. */
async function call(name: string): Promise<{ code: string; message: string }> {
  try {
    await calls[name]();
    return { code: "OK", message: "" };
  } catch (err) {
    const e = ConnectError.from(err);
    return { code: Code[e.code], message: e.rawMessage };
  }
}

(window as unknown as { probe: unknown }).probe = { call, watch };
if (settings.token) void watch();
