// The console's shell: sign-in, navigation by URL hash (no reloads, so the credential held in
// memory stays), and one page at a time.

import { alertBox, clear, current, merchants, showError, signIn, signOut, type Credential } from "./api";
import { button, field, fill, h, input } from "./dom";
import { renderChannels } from "./pages/channels";
import { renderLive, renderPayment, renderPayments } from "./pages/payments";
import { renderSettings } from "./pages/settings";
import { renderWebhooks } from "./pages/webhooks";

/** A page draws into `main` and returns what stops its streams when the operator leaves. */
export type Page = (main: HTMLElement, arg: string) => (() => void) | void;

const PAGES: { path: string; label: string; page: Page; key: boolean }[] = [
  { path: "payments", label: "Payments", page: renderPayments, key: true },
  { path: "live", label: "Live", page: renderLive, key: true },
  { path: "channels", label: "Channels", page: renderChannels, key: true },
  { path: "webhooks", label: "Webhooks", page: renderWebhooks, key: true },
  { path: "settings", label: "Settings", page: renderSettings, key: false },
];

let leave: (() => void) | void;

function route(): void {
  leave?.();
  leave = undefined;
  const main = document.getElementById("main") as HTMLElement;
  const cred = current();
  header(cred);
  if (!cred) {
    signInPage(main);
    return;
  }
  const [, path = "", arg = ""] = location.hash.split("/").map(decodeURIComponent);
  const allowed = PAGES.filter((p) => p.key === false || cred.kind === "key");
  const page = allowed.find((p) => p.path === path);
  if (!page) {
    location.replace(`#/${allowed[0].path}`);
    return;
  }
  document.title = `${page.label} · paygate console`;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    if (a.dataset.path === page.path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  leave = page.page(main, arg);
}

function header(cred: Credential | null): void {
  const top = document.getElementById("top") as HTMLElement;
  const brand = h("span", { class: "brand" }, "paygate console");
  if (!cred) {
    fill(top, brand);
    return;
  }
  const links = PAGES.filter((p) => !p.key || cred.kind === "key").map((p) =>
    h("a", { href: `#/${p.path}`, "data-path": p.path }, p.label),
  );
  const who =
    cred.kind === "key" ? `API key ${cred.secret.slice(0, 10)}…` : `admin token, merchant ${cred.merchantId}`;
  fill(
    top,
    brand,
    h("nav", { "aria-label": "Console" }, links),
    h(
      "div",
      { class: "who" },
      h("span", {}, who),
      button("Sign out", () => {
        signOut();
        location.hash = "";
        route();
      }),
    ),
  );
}

function signInPage(main: HTMLElement): void {
  document.title = "Sign in · paygate console";
  const secret = input("credential", { type: "password", required: true, autocomplete: "off" });
  const merchant = input("merchant_id", { placeholder: "mer_…" });
  const box = alertBox();
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h(
      "p",
      {},
      "Use one of your merchant's API keys, or the admin token. It is kept in this tab's memory only " +
        "(no cookie, no storage): reloading or closing the tab signs you out.",
    ),
    field("API key or admin token", secret),
    field("Merchant id", merchant, "Only with the admin token: the merchant whose settings you manage."),
    box,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(box, form);
    const cred = signIn(secret.value.trim(), merchant.value.trim());
    try {
      // A cheap call that every credential may make proves the credential before any page.
      await merchants.getApiAllowlist({ merchantId: cred.merchantId });
      secret.value = "";
      if (!location.hash || location.hash === "#") location.hash = cred.kind === "key" ? "#/payments" : "#/settings";
      route();
    } catch (err) {
      signOut();
      showError(box, err, form);
      secret.focus();
    }
  });
  fill(main, form);
  secret.focus();
}

window.addEventListener("hashchange", route);
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", route);
else route();
