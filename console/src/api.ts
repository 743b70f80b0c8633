// The gRPC API through gRPC-Web, from the console's own origin, with the credential the operator
// signed in with. The credential lives in this module only (memory, this tab): never a cookie, never
// web storage, so it is gone when the tab closes or reloads.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { ChannelService } from "./gen/paygate/v1/channels_pb";
import { MerchantService } from "./gen/paygate/v1/merchants_pb";
import { PaymentService } from "./gen/paygate/v1/payments_pb";
import { WebhookService } from "./gen/paygate/v1/webhooks_pb";
import { fill, h } from "./dom";

/** `merchantId`: with the admin token, the merchant its Settings act for (it must name one). */
export type Credential = { kind: "key" | "admin"; secret: string; merchantId: string };

let credential: Credential | null = null;

export function signIn(secret: string, merchantId: string): Credential {
  const kind = secret.startsWith("pgk_") ? "key" : "admin";
  credential = { kind, secret, merchantId: kind === "admin" ? merchantId : "" };
  return credential;
}
export function signOut(): void {
  credential = null;
}
export function current(): Credential | null {
  return credential;
}

const authorize: Interceptor = (next) => async (req) => {
  if (credential) req.header.set("authorization", `Bearer ${credential.secret}`);
  return next(req);
};

const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [authorize] });

export const payments: Client<typeof PaymentService> = createClient(PaymentService, transport);
export const channels: Client<typeof ChannelService> = createClient(ChannelService, transport);
export const merchants: Client<typeof MerchantService> = createClient(MerchantService, transport);
export const webhooks: Client<typeof WebhookService> = createClient(WebhookService, transport);

// What each status means to an operator; the server's own message follows it.
const MEANING: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "Some input was not accepted",
  [Code.NotFound]: "Not found",
  [Code.AlreadyExists]: "That already exists",
  [Code.PermissionDenied]: "Not allowed",
  [Code.Unauthenticated]: "Your key or token was not accepted; sign in again",
  [Code.FailedPrecondition]: "This cannot be done now",
  [Code.Aborted]: "Another request got in the way; try again",
  [Code.ResourceExhausted]: "Too many requests; wait a moment",
  [Code.Unavailable]: "paygate or a service behind it cannot be reached; try again",
  [Code.OutOfRange]: "The request is too large",
  [Code.DeadlineExceeded]: "No answer in time",
  [Code.Canceled]: "Cancelled",
};

export type Explained = { summary: string; message: string; violations: { field: string; description: string }[] };

/** An error in words: what it means, the server's message, and every field violation. */
export function explain(err: unknown): Explained {
  const e = ConnectError.from(err);
  const violations = e
    .findDetails(BadRequestSchema)
    .flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
  const summary = MEANING[e.code] ?? "Something went wrong";
  return { summary, message: e.rawMessage, violations };
}

/**
 * Shows an error in `box` (a role="alert" region) and marks each form input whose name is a
 * violation's field, so the operator sees which one is wrong and why.
 */
export function showError(box: HTMLElement, err: unknown, form?: HTMLElement): void {
  const { summary, message, violations } = explain(err);
  form?.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  for (const v of violations) {
    const base = v.field.replace(/\[\d+\]$/, "");
    const target = form?.querySelector(`[name="${CSS.escape(v.field)}"], [name="${CSS.escape(base)}"]`);
    target?.setAttribute("aria-invalid", "true");
  }
  // The message often lists the violations again: then they are shown once, as a list.
  const repeats = violations.length > 0 && violations.every((v) => message.includes(`${v.field}: ${v.description}`));
  fill(
    box,
    h("p", {}, h("strong", {}, summary), message && !repeats ? `: ${message}` : ""),
    violations.length
      ? h("ul", {}, violations.map((v) => h("li", {}, h("code", {}, v.field), ` ${v.description}`)))
      : null,
  );
  box.hidden = false;
  box.className = "alert error";
}

export function showOk(box: HTMLElement, ...content: (Node | string)[]): void {
  fill(box, h("p", {}, ...content));
  box.hidden = false;
  box.className = "alert ok";
}

export function clear(box: HTMLElement, form?: HTMLElement): void {
  box.hidden = true;
  box.replaceChildren();
  form?.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

/** An alert region for a form's or a section's outcome. */
export function alertBox(): HTMLElement {
  return h("div", { role: "alert", class: "alert", hidden: true });
}

export function isUnauthenticated(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Unauthenticated;
}
