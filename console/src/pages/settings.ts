// Settings: the API allowlist (CIDR blocks), the API keys (a new one shown once; revoke) and the
// audit trail. With the admin token they act for the merchant named at sign-in.

import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { alertBox, clear, current, merchants, showError, showOk } from "../api";
import { button, confirmDialog, details, field, fill, h, input, table } from "../dom";
import { timeEl } from "../format";
import type { ApiAllowlist, ApiKey } from "../gen/paygate/v1/merchants_pb";

export function renderSettings(main: HTMLElement): void {
  const merchantId = current()?.merchantId ?? "";
  const allowlist = h("section", { "aria-labelledby": "allow-title" });
  const keys = h("section", { "aria-labelledby": "keys-title" });
  const audit = h("section", { "aria-labelledby": "audit-title" });
  fill(main, h("h1", {}, "Settings"), allowlist, keys, audit);
  // Every change is audited: the trail is read again after each one.
  const changed = () => void drawAudit(audit, merchantId);
  void drawAllowlist(allowlist, merchantId, changed);
  void drawKeys(keys, merchantId, changed);
  void drawAudit(audit, merchantId);
}

async function drawAllowlist(section: HTMLElement, merchantId: string, changed: () => void): Promise<void> {
  const box = alertBox();
  let list: ApiAllowlist | undefined;
  try {
    list = await merchants.getApiAllowlist({ merchantId });
  } catch (err) {
    showError(box, err);
  }
  const blocks = [...(list?.cidrBlocks ?? [])];
  const save = async (next: string[], form?: HTMLElement) => {
    clear(box, form);
    try {
      await merchants.setApiAllowlist({ merchantId, cidrBlocks: next });
      changed();
      await drawAllowlist(section, merchantId, changed);
      const notice = section.querySelector<HTMLElement>("[role=alert]");
      if (notice) showOk(notice, next.length ? "Allowlist saved." : "Allowlist cleared: keys work from any address.");
    } catch (err) {
      showError(box, err, form);
    }
  };
  const block = input("cidr_blocks", { placeholder: "203.0.113.0/24" });
  const form = h(
    "form",
    { class: "inline-form", "aria-label": "Add a block" },
    field(
      "CIDR block",
      block,
      "Write a CIDR block (RFC 4632), not a single address: to allow only 1.1.1.1, write 1.1.1.1/32; to allow " +
        "1.1.1.0 to 1.1.1.255, write 1.1.1.0/24. IPv6 too (2001:db8::/32; one address /128).",
    ),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add block")),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void save([...blocks, block.value.trim()], form);
  });
  const inherited = list?.inheritedFromMerchantId;
  fill(
    section,
    h("h2", { id: "allow-title" }, "API allowlist"),
    h(
      "p",
      {},
      "When the list has blocks, this merchant's API keys work only from addresses inside them. The admin token is not limited by it.",
    ),
    blocks.length
      ? h(
          "ul",
          { class: "blocks" },
          blocks.map((b, i) =>
            h(
              "li",
              {},
              h("code", {}, b),
              " ",
              button("Remove", () => void save(blocks.filter((_, j) => j !== i)), { "aria-label": `Remove ${b}` }),
            ),
          ),
        )
      : h("p", { class: "empty" }, inherited ? `No blocks of its own: the parent's list applies.` : "No blocks: keys work from any address."),
    list && inherited
      ? details([
          ["Inherited from", inherited],
          ["Effective blocks", list.effectiveCidrBlocks.join(", ")],
        ])
      : null,
    form,
    box,
  );
}

async function drawKeys(section: HTMLElement, merchantId: string, changed: () => void, shown?: HTMLElement): Promise<void> {
  const box = alertBox();
  let keys: ApiKey[] = [];
  try {
    keys = (await merchants.listApiKeys({ merchantId, includeRevoked: true, pageSize: 100 })).keys;
  } catch (err) {
    showError(box, err);
  }
  const name = input("name", { required: true, maxlength: 128 });
  const expires = input("expires_at", { type: "date" });
  const form = h(
    "form",
    { class: "inline-form", "aria-label": "Create an API key" },
    field("Key name", name),
    field("Expires (optional)", expires, "The key stops working at the start of this day (UTC)."),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create key")),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(box, form);
    try {
      const made = await merchants.createApiKey({
        merchantId,
        name: name.value.trim(),
        expiresAt: expires.value ? timestampFromDate(new Date(`${expires.value}T00:00:00Z`)) : undefined,
      });
      // Shown once: the server keeps only a digest.
      const once = h(
        "div",
        { class: "alert ok once", role: "alert" },
        h("p", {}, h("strong", {}, `Key "${made.key?.name}" created (${made.key?.keyId}). Copy it now; it is shown this once:`)),
        h("p", {}, h("code", { class: "secret", "data-secret": "api-key" }, made.apiKey)),
      );
      changed();
      await drawKeys(section, merchantId, changed, once);
    } catch (err) {
      showError(box, err, form);
    }
  });
  const revoke = (k: ApiKey) =>
    button(
      "Revoke",
      async () => {
        const ok = await confirmDialog("Revoke this key?", [h("p", {}, `Key "${k.name}" (${k.keyPrefix}…) stops working at once, on every replica.`)], "Revoke key");
        if (!ok) return;
        try {
          await merchants.revokeApiKey({ keyId: k.keyId });
          changed();
          await drawKeys(section, merchantId, changed);
        } catch (err) {
          showError(box, err);
        }
      },
      { class: "danger", "aria-label": `Revoke ${k.name}` },
    );
  const mine = current()?.secret.slice(0, 10);
  fill(
    section,
    h("h2", { id: "keys-title" }, "API keys"),
    shown ?? null,
    keys.length
      ? table(
          "Keys (the key itself is never shown again)",
          ["Name", "Key id", "Starts with", "Created", "Expires", "Last used", "State", ""],
          keys.map((k) => [
            k.name,
            h("code", {}, k.keyId),
            h("code", {}, k.keyPrefix),
            timeEl(k.createdAt),
            timeEl(k.expiresAt),
            timeEl(k.lastUsedAt),
            h("span", { "data-key-state": k.revoked ? "revoked" : "active" }, k.revoked ? "revoked" : k.keyPrefix === mine ? "active (this session)" : "active"),
            k.revoked ? "" : revoke(k),
          ]),
        )
      : h("p", { class: "empty" }, "No keys."),
    form,
    box,
  );
}

async function drawAudit(section: HTMLElement, merchantId: string): Promise<void> {
  const box = alertBox();
  const action = input("action", { placeholder: "api_key.created" });
  const results = h("div", {});
  const form = h(
    "form",
    { class: "inline-form", "aria-label": "Filter the audit trail" },
    field("Action", action),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter")),
  );
  let pageToken = "";
  const load = async (more: boolean) => {
    clear(box, form);
    try {
      const res = await merchants.listAuditEvents({ merchantId, action: action.value.trim(), pageSize: 50, pageToken: more ? pageToken : "" });
      pageToken = res.nextPageToken;
      const rows = res.events.map((a) => [timeEl(a.createdAt), a.action, a.actor, a.target, a.changedFields.join(", "), a.address, a.merchantId]);
      const body = more ? results.querySelector("tbody") : null;
      if (body) rows.forEach((r) => body.append(h("tr", {}, r.map((c) => h("td", {}, c)))));
      else fill(results, rows.length ? table("Newest first", ["At", "Action", "Actor", "Target", "Fields set", "Address", "Merchant"], rows) : h("p", { class: "empty" }, "No entries."));
      results.querySelector(".more")?.remove();
      if (pageToken) results.append(h("p", { class: "more" }, button("Older entries", () => void load(true))));
    } catch (err) {
      showError(box, err, form);
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void load(false);
  });
  const refresh = button("Refresh", () => void load(false));
  fill(section, h("div", { class: "section-head" }, h("h2", { id: "audit-title" }, "Audit trail"), refresh), form, box, results);
  await load(false);
}
