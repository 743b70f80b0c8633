// Payments: the list with filters, one payment's detail (events, cancellations, webhook
// deliveries, refund), and the live view fed by WatchPayments.

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { alertBox, clear, payments, showError, showOk, webhooks } from "../api";
import { button, confirmDialog, details, field, fill, h, input, randomKey, table } from "../dom";
import {
  cancellationStatusName,
  money,
  parseAmount,
  statusBadge,
  statusName,
  ticketName,
  timeEl,
  triggerName,
} from "../format";
import { MoneySchema } from "../gen/paygate/v1/common_pb";
import {
  DeliveryState,
  DeliveryStatus,
  DeliveryType,
  PaymentStatus,
  type Delivery,
  type Payment,
  type PaymentEvent,
} from "../gen/paygate/v1/payments_pb";
import { WebhookDeliveryStatus, type WebhookDelivery } from "../gen/paygate/v1/webhooks_pb";

const STATUSES = [
  PaymentStatus.READY,
  PaymentStatus.PENDING_REVIEW,
  PaymentStatus.PAID,
  PaymentStatus.CANCEL_PENDING,
  PaymentStatus.PARTIAL_CANCELLED,
  PaymentStatus.CANCELLED,
  PaymentStatus.FAILED,
];

const link = (p: Payment) => h("a", { href: `#/payments/${encodeURIComponent(p.paymentId)}` }, p.paymentId);

function paymentRow(p: Payment): (Node | string)[] {
  return [link(p), p.merchantUid, statusBadge(p.status), money(p.amount), p.channelKey, p.test ? "test" : "live", timeEl(p.createdAt)];
}
const HEAD = ["Payment", "Order (merchant_uid)", "Status", "Amount", "Channel", "Mode", "Created"];

export function renderPayments(main: HTMLElement, paymentId: string): (() => void) | void {
  if (paymentId) return renderPayment(main, paymentId);
  const status = h("select", { name: "statuses" }, h("option", { value: "" }, "Any"), STATUSES.map((s) => h("option", { value: String(s) }, statusName(s))));
  const channel = input("channel_key");
  const from = input("created_from", { type: "date" });
  const to = input("created_to", { type: "date" });
  const box = alertBox();
  const results = h("div", {});
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter payments" },
    field("Status", status),
    field("Channel key", channel),
    field("Created from", from),
    field("Created until", to),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Apply filters")),
  );
  let pageToken = "";
  const load = async (append: boolean) => {
    clear(box, form);
    try {
      // Whole UTC days: "until" includes its day.
      const day = (v: string, end: boolean) =>
        v ? timestampFromDate(new Date(Date.parse(`${v}T00:00:00Z`) + (end ? 86_400_000 : 0))) : undefined;
      const res = await payments.listPayments({
        statuses: status.value ? [Number(status.value)] : [],
        channelKey: channel.value.trim(),
        createdFrom: day(from.value, false),
        createdTo: day(to.value, true),
        pageSize: 50,
        pageToken: append ? pageToken : "",
      });
      pageToken = res.nextPageToken;
      const rows = res.payments.map(paymentRow);
      const existing = append ? results.querySelector("tbody") : null;
      if (existing) rows.forEach((r) => existing.append(h("tr", {}, r.map((c, i) => h("td", { "data-label": HEAD[i] }, c)))));
      else fill(results, rows.length ? table("Payments, newest first", HEAD, rows) : h("p", { class: "empty" }, "No payments match."));
      results.querySelector(".more")?.remove();
      if (pageToken) results.append(h("p", { class: "more" }, button("Next page", () => load(true))));
    } catch (err) {
      showError(box, err, form);
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void load(false);
  });
  fill(main, h("h1", {}, "Payments"), form, box, results);
  void load(false);
}

/** A WatchPayments stream that resumes after its last event when it ends, until stopped. */
function watch(
  req: { paymentIds?: string[] },
  onEvent: (e: PaymentEvent) => void,
  onState: (connected: boolean, err?: unknown) => void,
): () => void {
  const abort = new AbortController();
  let resumeAfter = "";
  (async () => {
    let backoff = 500;
    while (!abort.signal.aborted) {
      try {
        const stream = payments.watchPayments({ ...req, resumeAfter }, { signal: abort.signal });
        onState(true);
        for await (const event of stream) {
          backoff = 500;
          if (event.eventId) resumeAfter = event.eventId;
          onEvent(event);
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        onState(false, err);
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10_000);
    }
  })();
  return () => abort.abort();
}

function liveState(el: HTMLElement, box: HTMLElement): (connected: boolean, err?: unknown) => void {
  return (connected, err) => {
    el.textContent = connected ? "Live: connected" : "Live: reconnecting…";
    el.dataset.connected = String(connected);
    if (err) showError(box, err);
    else clear(box);
  };
}

export function renderLive(main: HTMLElement): () => void {
  const state = h("p", { class: "live-state", role: "status" }, "Live: connecting…");
  const box = alertBox();
  const body = h("tbody", {});
  const rows = new Map<string, HTMLTableRowElement>();
  const upsert = (p: Payment, fresh: boolean, highlight = fresh) => {
    const tr = h("tr", { "data-payment-id": p.paymentId }, paymentRow(p).map((c, i) => h("td", { "data-label": HEAD[i] }, c)));
    const old = rows.get(p.paymentId);
    if (old && !fresh) return; // the stream's copy is newer than the list's
    if (old) old.replaceWith(tr);
    else body.prepend(tr);
    rows.set(p.paymentId, tr);
    if (highlight) tr.classList.add("changed");
  };
  fill(
    main,
    h("h1", {}, "Live payments"),
    h("p", {}, "Status changes appear here as they happen, and new checkouts within a few seconds, without reloading."),
    state,
    box,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h("caption", {}, "Payments, most recent change first"),
        h("thead", {}, h("tr", {}, HEAD.map((c) => h("th", { scope: "col" }, c)))),
        body,
      ),
    ),
  );
  // The stream first, then the recent list, so nothing that happens in between is missed.
  const stop = watch(
    {},
    (e) => {
      if (e.payment) upsert(e.payment, true);
    },
    liveState(state, box),
  );
  // The stream carries changes; a new checkout is no change yet (it is READY until paid), so the
  // newest page is read again every few seconds for payments not on screen. Rows already shown
  // change only through the stream.
  const fresh = (first: boolean) =>
    payments
      .listPayments({ pageSize: first ? 50 : 20 })
      .then((res) => [...res.payments].reverse().forEach((p) => upsert(p, false, !first)))
      .catch((err) => showError(box, err));
  void fresh(true);
  const poll = setInterval(() => {
    if (document.visibilityState === "visible") void fresh(false);
  }, 3000);
  return () => {
    clearInterval(poll);
    stop();
  };
}

export function renderPayment(main: HTMLElement, paymentId: string): () => void {
  const box = alertBox();
  const summary = h("section", { "aria-labelledby": "sum-title" });
  const refund = h("section", { "aria-labelledby": "refund-title" });
  const notice = alertBox();
  // A buyer says "I paid" and the pingback is late: ask Paymentwall now (SyncPayment).
  const check = button("Check with provider", () => void checkWithProvider());
  const checkWithProvider = async () => {
    check.disabled = true;
    try {
      const r = await payments.syncPayment({ lookup: { case: "paymentId", value: paymentId } });
      const after = r.payment ? statusName(r.payment.status) : "";
      showOk(notice, r.changed ? `${r.providerSays}. The payment is now ${after}.` : `${r.providerSays}. Nothing to change.`);
      await reload();
    } catch (err) {
      showError(notice, err);
    } finally {
      check.disabled = false;
    }
  };
  const cancellations = h("section", {});
  const shipments = h("section", {});
  const events = h("section", {});
  const deliveries = h("section", {});
  const state = h("p", { class: "live-state", role: "status" }, "Live: connecting…");
  fill(
    main,
    h("p", {}, h("a", { href: "#/payments" }, "← All payments")),
    h("h1", {}, "Payment ", h("code", {}, paymentId)),
    state,
    box,
    summary,
    h("p", { class: "actions" }, check),
    refund,
    notice,
    cancellations,
    shipments,
    events,
    deliveries,
  );
  const draw = (p: Payment) => {
    fill(
      summary,
      h("h2", { id: "sum-title" }, "Summary"),
      details([
        ["Status", statusBadge(p.status)],
        ["Order (merchant_uid)", p.merchantUid],
        ["Order name", p.orderName],
        ["Amount", money(p.amount)],
        ["Refunded", money(p.cancelledAmount)],
        ["Refundable", money(p.refundableAmount)],
        ["Channel", p.channelKey],
        ["Mode", p.test ? "test" : "live"],
        ["Buyer", [p.customer?.uid, p.customer?.email].filter(Boolean).join(" · ")],
        ["Payment method", p.paymentMethod],
        ["Provider ref", p.providerRef],
        ["Subscription", p.subscriptionId],
        ["Created", timeEl(p.createdAt)],
        ["Paid", timeEl(p.paidAt)],
        ["Failed", timeEl(p.failedAt)],
        ["Cancelled", timeEl(p.cancelledAt)],
      ]),
    );
    fill(
      cancellations,
      h("h2", {}, "Cancellations"),
      p.cancellations.length
        ? table(
            "Refunds and reversals",
            ["Cancellation", "Status", "Amount", "Trigger", "Reason", "Ticket", "Created", "Completed", "Failure"],
            p.cancellations.map((c) => [
              c.cancellationId,
              cancellationStatusName(c.status),
              money(c.amount),
              triggerName(c.trigger),
              c.reason,
              ticketName(c.ticketState),
              timeEl(c.createdAt),
              timeEl(c.completedAt),
              c.failure,
            ]),
          )
        : h("p", { class: "empty" }, "None."),
    );
    drawDeliveryConfirmations(shipments, p.deliveries);
    // Not while the operator is typing a refund.
    const typing = refund.querySelector("form")?.contains(document.activeElement) && document.activeElement?.tagName === "INPUT";
    if (!typing) drawRefund(refund, p, reload, notice);
  };
  const reload = async () => {
    try {
      const [p, ev] = await Promise.all([
        payments.getPayment({ lookup: { case: "paymentId", value: paymentId } }),
        payments.listPaymentEvents({ paymentId, pageSize: 100 }),
      ]);
      draw(p);
      drawEvents(events, ev.events);
      void drawDeliveries(deliveries, paymentId);
    } catch (err) {
      showError(box, err);
    }
  };
  void reload();
  // Status changes arrive live; each one redraws the detail from the source.
  return watch(
    { paymentIds: [paymentId] },
    (e) => {
      if (!e.snapshot) void reload();
    },
    liveState(state, box),
  );
}

const DELIVERY_TYPES: Record<number, string> = { [DeliveryType.DIGITAL]: "digital", [DeliveryType.PHYSICAL]: "physical" };
const DELIVERY_STATUSES: Record<number, string> = {
  [DeliveryStatus.ORDER_PLACED]: "order placed",
  [DeliveryStatus.ORDER_SHIPPED]: "shipped",
  [DeliveryStatus.DELIVERING]: "on its way",
  [DeliveryStatus.DELIVERED]: "delivered",
};
const DELIVERY_STATES: Record<number, string> = {
  [DeliveryState.PENDING]: "not yet sent (retrying)",
  [DeliveryState.SENT]: "sent",
  [DeliveryState.REFUSED]: "refused",
};

/** The payment's delivery confirmations (ConfirmDelivery, or the channel's automatic ones). */
function drawDeliveryConfirmations(section: HTMLElement, list: Delivery[]): void {
  fill(
    section,
    h("h2", {}, "Delivery"),
    list.length
      ? table(
          "Delivery confirmations, oldest first",
          ["Confirmation", "What", "Where it stands", "Tracking", "Report to Paymentwall", "At"],
          list.map((d) => [
            d.deliveryId,
            DELIVERY_TYPES[d.type] ?? "",
            DELIVERY_STATUSES[d.status] ?? "",
            [d.carrier, d.trackingId].filter(Boolean).join(" "),
            h(
              "span",
              { "data-delivery-state": DeliveryState[d.state] ?? "" },
              `${DELIVERY_STATES[d.state] ?? ""} · ${d.attempts} ${d.attempts === 1 ? "try" : "tries"}`,
              d.lastError ? h("br") : null,
              d.lastError,
            ),
            timeEl(d.sentAt ?? d.createdAt),
          ]),
        )
      : h("p", { class: "empty" }, "No delivery confirmed yet."),
  );
}

function drawEvents(section: HTMLElement, events: PaymentEvent[]): void {
  fill(
    section,
    h("h2", {}, "Events"),
    events.length
      ? table(
          "Every change, oldest first",
          ["Event", "What happened", "Status after", "At"],
          events.map((e) => [e.eventId, e.kind, e.payment ? statusBadge(e.payment.status) : "", timeEl(e.createdAt)]),
        )
      : h("p", { class: "empty" }, "None."),
  );
}

async function drawDeliveries(section: HTMLElement, paymentId: string): Promise<void> {
  // The delivery log is per merchant: read its recent pages and keep this payment's.
  const mine: WebhookDelivery[] = [];
  let pageToken = "";
  try {
    for (let page = 0; page < 5; page++) {
      const res = await webhooks.listWebhookDeliveries({ pageSize: 100, pageToken });
      mine.push(...res.deliveries.filter((d) => d.paymentId === paymentId));
      pageToken = res.nextPageToken;
      if (!pageToken) break;
    }
  } catch (err) {
    const box = alertBox();
    showError(box, err);
    fill(section, h("h2", {}, "Webhook deliveries"), box);
    return;
  }
  fill(
    section,
    h("h2", {}, "Webhook deliveries"),
    mine.length
      ? table(
          "Deliveries of this payment's events",
          ["Delivery", "Event type", "Status", "Attempts", "Created"],
          mine.map((d) => [
            d.deliveryId,
            d.eventType,
            deliveryStatus(d.status),
            String(d.attempts.length),
            timeEl(d.createdAt),
          ]),
        )
      : h("p", { class: "empty" }, "None (or none in the 500 most recent deliveries)."),
  );
}

export function deliveryStatus(s: WebhookDeliveryStatus): string {
  return (WebhookDeliveryStatus[s] ?? String(s)).replace("WEBHOOK_DELIVERY_STATUS_", "");
}

function drawRefund(section: HTMLElement, p: Payment, reload: () => Promise<void>, notice: HTMLElement): void {
  const currency = p.refundableAmount?.currency || p.amount?.currency || "";
  const refundable = p.refundableAmount?.amountMinor ?? 0n;
  if (refundable <= 0n) {
    fill(section, h("h2", { id: "refund-title" }, "Refund"), h("p", { class: "empty" }, `Nothing to refund (status ${statusName(p.status)}).`));
    return;
  }
  const amount = input("amount", { inputmode: "decimal", placeholder: money(p.refundableAmount).replace(`${currency} `, "") });
  const reason = input("reason", { required: true });
  const box = alertBox();
  // One key per refund the operator means: a retry of the same confirmation reuses it.
  let idempotencyKey = randomKey();
  const form = h(
    "form",
    { class: "inline-form", "aria-labelledby": "refund-title" },
    field(`Amount (${currency}; empty: everything refundable)`, amount),
    field("Reason", reason),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "danger" }, "Refund…")),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(box, form);
    const text = amount.value.trim();
    const minor = text ? parseAmount(text, currency) : refundable;
    if (minor === null) {
      showError(box, new Error(`amount: write it like 9.99 (${currency})`), form);
      amount.setAttribute("aria-invalid", "true");
      return;
    }
    const what = money(create(MoneySchema, { amountMinor: minor, currency }));
    const ok = await confirmDialog("Refund this payment?", [h("p", {}, `Refund ${what} of ${p.paymentId} (${p.merchantUid}) to the buyer.`), h("p", {}, "Paymentwall is asked through a cancellation ticket; this cannot be undone.")], `Refund ${what}`);
    if (!ok) return;
    try {
      const c = await payments.refundPayment({
        paymentId: p.paymentId,
        amount: text ? { amountMinor: minor, currency } : undefined,
        reason: reason.value.trim(),
        expectedRefundableAmount: refundable,
        idempotencyKey,
      });
      idempotencyKey = randomKey();
      showOk(notice, `Refund ${c.cancellationId} requested: ${cancellationStatusName(c.status)}.`);
      await reload();
    } catch (err) {
      showError(box, err, form);
    }
  });
  fill(section, h("h2", { id: "refund-title" }, "Refund"), h("p", {}, `Refundable: ${money(p.refundableAmount)}.`), form, box);
}

