// Webhooks: the endpoint and its event types, "send test webhook", the delivery log with every
// attempt, redeliver. A new signing secret is shown once, right after it is made.

import { alertBox, clear, isUnauthenticated, showError, showOk, webhooks } from "../api";
import { button, details, field, fill, h, input, table } from "../dom";
import { timeEl } from "../format";
import type { WebhookDelivery, WebhookEndpoint } from "../gen/paygate/v1/webhooks_pb";
import { deliveryStatus } from "./payments";

const EVENT_TYPES = [
  "payment.paid",
  "payment.pending_review",
  "payment.failed",
  "payment.cancel_pending",
  "payment.partially_cancelled",
  "payment.cancelled",
  "subscription.cancel_requested",
  "subscription.cancelled",
  "subscription.expired",
  "subscription.payment_failed",
  "customer.erased",
  "payment.synced",
  "payment.delivery_updated",
];

export function renderWebhooks(main: HTMLElement): void {
  const endpoint = h("section", { "aria-labelledby": "endpoint-title" });
  const log = h("section", { "aria-labelledby": "log-title" });
  fill(main, h("h1", {}, "Webhooks"), endpoint, log);
  const refreshLog = () => drawLog(log);
  void drawEndpoint(endpoint, refreshLog);
  void refreshLog();
}

async function drawEndpoint(section: HTMLElement, refreshLog: () => Promise<void>): Promise<void> {
  const box = alertBox();
  let current: WebhookEndpoint | undefined;
  try {
    current = await webhooks.getWebhookEndpoint({});
  } catch (err) {
    // NOT_FOUND: no endpoint yet, which the form below sets.
    if (isUnauthenticated(err)) showError(box, err);
  }
  const url = input("url", { type: "url", value: current?.url ?? "", required: true, placeholder: "https://shop.example/webhooks/paygate" });
  const chosen = new Set(current?.eventTypes ?? []);
  const types = h(
    "fieldset",
    { class: "checks" },
    h("legend", {}, "Event types (none ticked: all)"),
    EVENT_TYPES.map((t) =>
      h("label", {}, h("input", { type: "checkbox", name: "event_types", value: t, checked: chosen.has(t) }), ` ${t}`),
    ),
  );
  const secretBox = h("div", {});
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "endpoint-title" },
    field("Webhook URL", url, "paygate POSTs each event here as JSON, signed with Standard Webhooks."),
    types,
    box,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, current ? "Save endpoint (makes a new secret)" : "Save endpoint")),
  );
  const testBox = alertBox();
  const sendTest = button("Send test webhook", async () => {
    clear(testBox);
    try {
      const d = await webhooks.sendTestWebhook({});
      showOk(testBox, `Test webhook ${d.deliveryId} queued (${d.eventType}); its attempts appear in the delivery log.`);
      await refreshLog();
      setTimeout(() => void refreshLog(), 1500);
    } catch (err) {
      showError(testBox, err);
    }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(box, form);
    try {
      const eventTypes = [...form.querySelectorAll<HTMLInputElement>("input[name=event_types]:checked")].map((i) => i.value);
      const saved = await webhooks.setWebhookEndpoint({ url: url.value.trim(), eventTypes });
      // The secret exists in this response only: shown once, never again.
      fill(
        secretBox,
        h(
          "div",
          { class: "alert ok once", role: "alert" },
          h("p", {}, h("strong", {}, "Endpoint saved. Its signing secret, shown this once:")),
          h("p", {}, h("code", { class: "secret", "data-secret": "webhook" }, saved.secret)),
          h("p", {}, "Copy it to your receiver now; paygate will not show it again. The previous secret keeps signing for 24 hours."),
        ),
      );
      drawCurrent(saved);
    } catch (err) {
      showError(box, err, form);
    }
  });
  const summary = h("div", {});
  const drawCurrent = (ep: WebhookEndpoint | undefined) =>
    fill(
      summary,
      ep
        ? details([
            ["URL", h("code", {}, ep.url)],
            ["Event types", ep.eventTypes.join(", ") || "all"],
            ["Signing secrets in use", String(ep.activeSecrets)],
            ["Disabled", ep.disabledAt ? h("span", {}, timeEl(ep.disabledAt), ` ${ep.disabledReason}`) : ""],
            ["Updated", timeEl(ep.updatedAt)],
          ])
        : h("p", { class: "empty" }, "No endpoint yet."),
    );
  drawCurrent(current);
  fill(
    section,
    h("h2", { id: "endpoint-title" }, "Endpoint"),
    summary,
    secretBox,
    form,
    h("div", { class: "actions" }, sendTest),
    testBox,
  );
}

async function drawLog(section: HTMLElement): Promise<void> {
  const box = alertBox();
  const head = h("div", { class: "section-head" }, h("h2", { id: "log-title" }, "Delivery log"), button("Refresh", () => void drawLog(section)));
  let deliveries: WebhookDelivery[] = [];
  try {
    deliveries = (await webhooks.listWebhookDeliveries({ pageSize: 50 })).deliveries;
  } catch (err) {
    showError(box, err);
  }
  const redeliver = (d: WebhookDelivery) =>
    button(
      "Redeliver",
      async () => {
        clear(box);
        try {
          const again = await webhooks.redeliverWebhook({ deliveryId: d.deliveryId });
          await drawLog(section);
          const notice = section.querySelector<HTMLElement>("[role=alert]");
          if (notice) showOk(notice, `Delivery ${again.deliveryId} queued again.`);
        } catch (err) {
          showError(box, err);
        }
      },
      { "aria-label": `Redeliver ${d.deliveryId}` },
    );
  fill(
    section,
    head,
    box,
    deliveries.length
      ? table(
          "Most recent first",
          ["Delivery", "Event type", "Payment", "Status", "Attempts", "Next attempt", "Created", ""],
          deliveries.map((d) => [
            h("code", {}, d.deliveryId),
            d.eventType,
            d.paymentId ? h("a", { href: `#/payments/${encodeURIComponent(d.paymentId)}` }, d.paymentId) : "",
            h("span", { "data-delivery-status": deliveryStatus(d.status) }, deliveryStatus(d.status)),
            attempts(d),
            timeEl(d.nextAttemptAt),
            timeEl(d.createdAt),
            redeliver(d),
          ]),
        )
      : h("p", { class: "empty" }, "No deliveries yet."),
  );
}

function attempts(d: WebhookDelivery): HTMLElement | string {
  if (!d.attempts.length) return "none yet";
  return h(
    "details",
    {},
    h("summary", {}, `${d.attempts.length} attempt${d.attempts.length > 1 ? "s" : ""}`),
    h(
      "ol",
      {},
      d.attempts.map((a) =>
        h("li", {}, timeEl(a.at), ` HTTP ${a.statusCode || "none"}`, a.error ? ` (${a.error})` : "", `, ${a.latencyMs} ms`),
      ),
    ),
  );
}
