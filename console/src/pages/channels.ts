// Channels: test and live cards (as in the i'mport console), create and edit one, assign it to a
// sub-merchant. The secret key is write-only: the API never returns it and the form never shows it.

import { alertBox, channels, clear, showError, showOk } from "../api";
import { button, details, field, fill, h, input } from "../dom";
import { timeEl } from "../format";
import { ChannelMode, Provider, type Channel } from "../gen/paygate/v1/channels_pb";

export function renderChannels(main: HTMLElement): void {
  const box = alertBox();
  const test = h("section", { "aria-labelledby": "test-title" });
  const live = h("section", { "aria-labelledby": "live-title" });
  const editor = h("div", {});
  fill(main, h("h1", {}, "Channels"), box, editor, test, live);
  const load = async () => {
    clear(box);
    try {
      const all: Channel[] = [];
      let pageToken = "";
      do {
        const res = await channels.listChannels({ pageSize: 100, pageToken, includeDisabled: true });
        all.push(...res.channels);
        pageToken = res.nextPageToken;
      } while (pageToken);
      const open = (mode: ChannelMode, c?: Channel) => edit(editor, mode, c, load);
      group(test, "test-title", "Test channels", ChannelMode.TEST, all, open);
      group(live, "live-title", "Live channels", ChannelMode.LIVE, all, open);
    } catch (err) {
      showError(box, err);
    }
  };
  void load();
}

function group(
  section: HTMLElement,
  id: string,
  title: string,
  mode: ChannelMode,
  all: Channel[],
  open: (mode: ChannelMode, c?: Channel) => void,
): void {
  const mine = all.filter((c) => c.mode === mode);
  const add = mode === ChannelMode.TEST ? "Add test channel" : "Add live channel";
  fill(
    section,
    h("div", { class: "section-head" }, h("h2", { id }, title), button(add, () => open(mode), { class: "primary" })),
    mine.length ? h("ul", { class: "cards" }, mine.map((c) => card(c, open))) : h("p", { class: "empty" }, "None yet."),
  );
}

function card(c: Channel, open: (mode: ChannelMode, c?: Channel) => void): HTMLElement {
  const pw = c.paymentwall;
  return h(
    "li",
    { class: "card", "data-channel-key": c.channelKey },
    h("h3", {}, c.name || c.channelKey, " ", h("span", { class: `badge mode-${c.mode === ChannelMode.LIVE ? "live" : "test"}` }, c.mode === ChannelMode.LIVE ? "LIVE" : "TEST"), c.disabledAt ? h("span", { class: "badge" }, "disabled") : null),
    details([
      ["Channel key", h("code", {}, c.channelKey)],
      ["Provider", c.providerName || "paymentwall"],
      ["Project key", pw?.projectKey ?? ""],
      ["Secret key", h("span", { class: "muted" }, "set (write-only, never shown)")],
      ["Widget", pw?.widget ?? ""],
      ["Signature version", pw?.signVersion ? String(pw.signVersion) : ""],
      ["Pingback allowlist", pw?.pingbackAllowlist.join(", ") || "Paymentwall's published addresses"],
      ["API base URL", pw?.apiBaseUrl ?? ""],
      ["Digital delivery", pw?.confirmDigitalDelivery ? "confirmed to Paymentwall when paid" : "confirmed by the merchant (ConfirmDelivery)"],
      // The pingback port's public host is the ingress's, which the console cannot know.
      ["Pingback path", c.pingbackPath ? h("code", {}, c.pingbackPath) : ""],
      ["Used by", c.merchantId === c.ownerMerchantId || !c.ownerMerchantId ? `${c.merchantId} (this merchant)` : `sub-merchant ${c.merchantId}`],
      ["Updated", timeEl(c.updatedAt)],
    ]),
    h("div", { class: "actions" }, button("Edit information", () => open(c.mode, c), { "aria-label": `Edit ${c.name || c.channelKey}` })),
  );
}

function edit(editor: HTMLElement, mode: ChannelMode, c: Channel | undefined, saved: () => Promise<void>): void {
  const pw = c?.paymentwall;
  const f = {
    channelKey: input("channel_key", { value: c?.channelKey ?? "", required: true, readonly: !!c }),
    name: input("name", { value: c?.name ?? "" }),
    mode: h("select", { name: "mode" }, h("option", { value: String(ChannelMode.TEST) }, "TEST"), h("option", { value: String(ChannelMode.LIVE) }, "LIVE")),
    projectKey: input("paymentwall.project_key", { value: pw?.projectKey ?? "" }),
    // Write-only: never filled in, never echoed; empty on an edit leaves the stored one.
    secretKey: input("paymentwall.secret_key", { type: "password", autocomplete: "new-password", value: "", placeholder: c ? "unchanged" : "" }),
    widget: input("paymentwall.widget", { value: pw?.widget ?? "", placeholder: "p1_1" }),
    signVersion: h("select", { name: "paymentwall.sign_version" }, h("option", { value: "3" }, "3"), h("option", { value: "2" }, "2")),
    allowlist: h("textarea", { name: "paymentwall.pingback_allowlist", rows: 3, spellcheck: "false" }, (pw?.pingbackAllowlist ?? []).join("\n")),
    apiBaseUrl: input("paymentwall.api_base_url", { value: pw?.apiBaseUrl ?? "", placeholder: "https://api.paymentwall.com" }),
    confirmDigitalDelivery: input("paymentwall.confirm_digital_delivery", { type: "checkbox" }),
    subMerchant: input("sub_merchant_id", { value: c && c.merchantId !== c.ownerMerchantId && c.ownerMerchantId ? c.merchantId : "", placeholder: "mer_…" }),
  };
  f.mode.value = String(c?.mode ?? mode);
  f.signVersion.value = String(pw?.signVersion || 3);
  f.confirmDigitalDelivery.checked = !!pw?.confirmDigitalDelivery;
  const box = alertBox();
  const title = c ? `Edit ${c.name || c.channelKey}` : mode === ChannelMode.LIVE ? "New live channel" : "New test channel";
  const form = h(
    "form",
    { class: "card editor", "aria-labelledby": "editor-title" },
    h("h2", { id: "editor-title" }, title),
    h(
      "div",
      { class: "grid" },
      field("Channel key", f.channelKey, c ? "Cannot change." : "Letters, digits, - and _; part of the pingback URL."),
      field("Name", f.name),
      field("Mode", f.mode),
      field("Project key", f.projectKey),
      field("Secret key", f.secretKey, c ? "Write-only: leave empty to keep the stored secret; type a new one to rotate it." : "Write-only: stored encrypted, never shown again."),
      field("Widget code", f.widget, "Empty: the default widget."),
      field("Signature version", f.signVersion),
      field("Pingback allowlist", f.allowlist, "CIDR blocks, one a line; empty: Paymentwall's published addresses."),
      field("API base URL", f.apiBaseUrl, "Empty: Paymentwall itself."),
      field("Confirm digital delivery when paid", f.confirmDigitalDelivery, "Digital goods: each paid payment is reported to Paymentwall as delivered."),
      field("Assigned to sub-merchant", f.subMerchant, "Empty: this merchant uses it."),
    ),
    box,
    h("div", { class: "actions" }, button("Cancel", () => editor.replaceChildren()), h("button", { type: "submit", class: "primary" }, c ? "Save changes" : "Create channel")),
  );
  const lines = (t: string) => t.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(box, form);
    const paymentwall = {
      projectKey: f.projectKey.value.trim(),
      secretKey: f.secretKey.value,
      widget: f.widget.value.trim(),
      signVersion: Number(f.signVersion.value),
      pingbackAllowlist: lines(f.allowlist.value),
      apiBaseUrl: f.apiBaseUrl.value.trim(),
      confirmDigitalDelivery: f.confirmDigitalDelivery.checked,
    };
    try {
      let result: Channel;
      if (!c) {
        result = await channels.createChannel({
          channelKey: f.channelKey.value.trim(),
          name: f.name.value.trim(),
          provider: Provider.PAYMENTWALL,
          mode: Number(f.mode.value),
          paymentwall,
          subMerchantId: f.subMerchant.value.trim(),
        });
      } else {
        const paths = changedPaths(c, f, paymentwall);
        if (!paths.length) {
          showOk(box, "Nothing changed.");
          return;
        }
        result = await channels.updateChannel({
          channelKey: c.channelKey,
          channel: { name: f.name.value.trim(), mode: Number(f.mode.value), subMerchantId: f.subMerchant.value.trim(), paymentwall },
          updateMask: { paths },
        });
      }
      f.secretKey.value = "";
      editor.replaceChildren();
      await saved();
      const card = document.querySelector(`[data-channel-key="${CSS.escape(result.channelKey)}"]`);
      card?.classList.add("changed");
      (card?.querySelector("button") as HTMLButtonElement | null)?.focus();
    } catch (err) {
      showError(box, err, form);
    }
  });
  fill(editor, form);
  (c ? f.name : f.channelKey).focus();
}

type Fields = {
  name: HTMLInputElement;
  mode: HTMLSelectElement;
  subMerchant: HTMLInputElement;
};

/** The update mask: only what the operator changed (a typed secret is always a change). */
function changedPaths(c: Channel, f: Fields, pw: { projectKey: string; secretKey: string; widget: string; signVersion: number; pingbackAllowlist: string[]; apiBaseUrl: string; confirmDigitalDelivery: boolean }): string[] {
  const old = c.paymentwall;
  const paths: string[] = [];
  if (f.name.value.trim() !== c.name) paths.push("name");
  if (Number(f.mode.value) !== c.mode) paths.push("mode");
  const assigned = c.ownerMerchantId && c.merchantId !== c.ownerMerchantId ? c.merchantId : "";
  if (f.subMerchant.value.trim() !== assigned) paths.push("sub_merchant_id");
  if (pw.projectKey !== (old?.projectKey ?? "")) paths.push("paymentwall.project_key");
  if (pw.secretKey) paths.push("paymentwall.secret_key");
  if (pw.widget !== (old?.widget ?? "")) paths.push("paymentwall.widget");
  if (pw.signVersion !== (old?.signVersion || 3)) paths.push("paymentwall.sign_version");
  if (pw.pingbackAllowlist.join("\n") !== (old?.pingbackAllowlist ?? []).join("\n")) paths.push("paymentwall.pingback_allowlist");
  if (pw.apiBaseUrl !== (old?.apiBaseUrl ?? "")) paths.push("paymentwall.api_base_url");
  if (pw.confirmDigitalDelivery !== !!old?.confirmDigitalDelivery) paths.push("paymentwall.confirm_digital_delivery");
  return paths;
}
