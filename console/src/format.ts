// How values read on screen.

import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Money } from "./gen/paygate/v1/common_pb";
import { CancellationStatus, CancellationTrigger, PaymentStatus, TicketState } from "./gen/paygate/v1/payments_pb";
import { h } from "./dom";

/** An enum value's name without its prefix: PAYMENT_STATUS_PAID -> PAID. */
function enumName(e: Record<number, string>, value: number, prefix: string): string {
  return (e[value] ?? String(value)).replace(prefix, "");
}

export const statusName = (s: PaymentStatus): string => enumName(PaymentStatus, s, "PAYMENT_STATUS_");
export const cancellationStatusName = (s: CancellationStatus): string =>
  enumName(CancellationStatus, s, "CANCELLATION_STATUS_");
export const triggerName = (t: CancellationTrigger): string => enumName(CancellationTrigger, t, "CANCELLATION_TRIGGER_");
export const ticketName = (t: TicketState): string => enumName(TicketState, t, "TICKET_STATE_");

/** A status as a badge whose text is the status itself (colour is never the only cue). */
export function statusBadge(s: PaymentStatus): HTMLElement {
  const name = statusName(s);
  return h("span", { class: `badge status-${name.toLowerCase()}`, "data-status": name }, name);
}

// ISO 4217 currencies without minor units, and those with three; the rest have two.
const ZERO = new Set(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"]);
const THREE = new Set(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"]);

export function minorDigits(currency: string): number {
  return ZERO.has(currency) ? 0 : THREE.has(currency) ? 3 : 2;
}

export function money(m: Money | undefined): string {
  if (!m || !m.currency) return "";
  const digits = minorDigits(m.currency);
  const n = Number(m.amountMinor);
  const sign = n < 0 ? "-" : "";
  const abs = Math.abs(n);
  const major = digits ? `${Math.trunc(abs / 10 ** digits)}.${String(abs % 10 ** digits).padStart(digits, "0")}` : String(abs);
  return `${m.currency} ${sign}${major}`;
}

/** "12.34" in `currency` as minor units, or null when it is not such an amount. */
export function parseAmount(text: string, currency: string): bigint | null {
  const digits = minorDigits(currency);
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text.trim());
  if (!match || (match[2] ?? "").length > digits) return null;
  return BigInt(match[1]) * 10n ** BigInt(digits) + BigInt((match[2] ?? "").padEnd(digits, "0") || "0");
}

export function time(t: Timestamp | undefined): string {
  if (!t || (t.seconds === 0n && t.nanos === 0)) return "";
  return timestampDate(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function timeEl(t: Timestamp | undefined): HTMLElement | string {
  const text = time(t);
  return text ? h("time", { datetime: timestampDate(t!).toISOString() }, text) : "";
}
