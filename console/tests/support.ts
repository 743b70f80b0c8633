// What the browser tests stand on: the real `paygate` binary on a SQLite file of its own, the
// Paymentwall simulator, a webhook receiver, Debian's Chromium driven by Playwright, screenshots.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { chromium, type Browser, type Page } from "playwright-core";
import { ChannelMode, ChannelService, Provider } from "../src/gen/paygate/v1/channels_pb";
import { PaymentService, PaymentStatus } from "../src/gen/paygate/v1/payments_pb";

export const ROOT = resolve(process.env.PAYGATE_ROOT ?? ".");
const BIN = resolve(ROOT, process.env.PAYGATE_BIN_DIR ?? "target/debug");
export const SHOTS = resolve(ROOT, process.env.PAYGATE_SCREENSHOTS ?? "target/browser-screenshots");
mkdirSync(SHOTS, { recursive: true });

// Paymentwall's public test credentials (from its SDKs' test suites), as the demo uses.
export const PROJECT_KEY = "c22f895840bf2391f67a40da64bfed26";
export const SECRET_KEY = "a7408723eaf4bfa2e3ac49b3cb695046";

/** A child process whose JSON log lines are kept (for failures) and searched for a ready line. */
class Proc {
  readonly logs: string[] = [];
  constructor(readonly name: string, readonly child: ChildProcess) {
    for (const stream of [child.stdout, child.stderr]) {
      if (stream) createInterface({ input: stream }).on("line", (l) => this.logs.push(l));
    }
  }
  ready(message: string, timeoutMs = 30_000): Promise<Record<string, string>> {
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`${this.name} not ready:\n${this.logs.join("\n")}`)), timeoutMs);
      const lines = createInterface({ input: this.child.stdout! });
      lines.on("line", (line) => {
        try {
          const json = JSON.parse(line);
          const fields = { ...json, ...(json.fields ?? {}) };
          if (fields.message === message) {
            clearTimeout(timer);
            ok(fields);
          }
        } catch {
          // not JSON
        }
      });
      this.child.on("exit", (code) => fail(new Error(`${this.name} exited ${code}:\n${this.logs.join("\n")}`)));
    });
  }
  stop(): void {
    if (this.child.exitCode === null) this.child.kill("SIGTERM");
  }
}

export type Paygate = {
  grpc: string; // http://127.0.0.1:port, where /console is too
  http: string;
  env: Record<string, string>;
  stop: () => void;
  logs: () => string;
};

/** `paygate serve` on a fresh SQLite file, loopback ports chosen by the OS. */
export async function startPaygate(extra: Record<string, string> = {}): Promise<Paygate> {
  const dir = mkdtempSync(join(tmpdir(), "paygate-browser-"));
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "",
    PAYGATE_DATABASE_URL: `sqlite://${join(dir, "paygate.db")}?mode=rwc`,
    PAYGATE_LOG_FORMAT: "json",
    PAYGATE_GRPC_ADDR: "127.0.0.1:0",
    PAYGATE_HTTP_ADDR: "127.0.0.1:0",
    PAYGATE_ADMIN_TOKEN: `browser-admin-${randomBytes(8).toString("hex")}`,
    PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS: "true",
    PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS: "true",
    PAYGATE_WEBHOOK_POLL_INTERVAL_MS: "50",
    ...extra,
  };
  // The master key file beside the database is made by the first process: make it before serving.
  const migrated = spawnSync(join(BIN, "paygate"), ["migrate"], { env, cwd: dir, encoding: "utf8" });
  if (migrated.status !== 0) throw new Error(`paygate migrate: ${migrated.stderr}${migrated.stdout}`);
  const proc = new Proc("paygate", spawn(join(BIN, "paygate"), ["serve"], { env, cwd: dir }));
  const ready = await proc.ready("paygate ready");
  return {
    grpc: `http://${ready.grpc_addr}`,
    http: `http://${ready.http_addr}`,
    env,
    logs: () => proc.logs.join("\n"),
    stop: () => {
      proc.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `paygate admin create-merchant`, as an operator runs it. */
export function createMerchant(pg: Paygate, name: string): { merchantId: string; apiKey: string } {
  const out = spawnSync(join(BIN, "paygate"), ["admin", "create-merchant", "--name", name], { env: pg.env, encoding: "utf8" });
  if (out.status !== 0) throw new Error(`create-merchant: ${out.stderr}`);
  const json = JSON.parse(out.stdout);
  return { merchantId: json.merchant_id, apiKey: json.api_key };
}

/** Clients of the API over gRPC-Web from this test (Node's fetch), with a bearer credential. */
export function clients(pg: Paygate, credential: string) {
  const transport = createGrpcWebTransport({
    baseUrl: pg.grpc,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${credential}`), next(req))],
  });
  return {
    payments: createClient(PaymentService, transport) as Client<typeof PaymentService>,
    channels: createClient(ChannelService, transport) as Client<typeof ChannelService>,
  };
}

export type Sim = { url: string; stop: () => void; control: (path: string, body?: unknown) => Promise<Response> };

export async function startSim(): Promise<Sim> {
  const child = spawn(join(BIN, "paymentwall-sim"), ["--listen", "127.0.0.1:0", "--retry-interval-ms", "200"], {
    env: { PATH: process.env.PATH ?? "" },
  });
  const proc = new Proc("paymentwall-sim", child);
  const ready = await proc.ready("paymentwall-sim ready");
  const url = `http://${ready.addr}`;
  const control = (path: string, body?: unknown) =>
    fetch(`${url}/control/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  return { url, control, stop: () => proc.stop() };
}

/** Registers the channel's project with the simulator, as one enters the pingback URL at Paymentwall. */
export async function registerProject(sim: Sim, pg: Paygate, pingbackPath: string): Promise<void> {
  const res = await sim.control("projects", { key: PROJECT_KEY, secret: SECRET_KEY, pingback_url: `${pg.http}${pingbackPath}`, sign_version: 3 });
  if (!res.ok) throw new Error(`sim projects: ${res.status}`);
}

/** A TEST channel on the simulator, made over the API (for tests about payments, not channels). */
export async function testChannel(pg: Paygate, sim: Sim, apiKey: string, channelKey: string): Promise<void> {
  const channel = await clients(pg, apiKey).channels.createChannel({
    channelKey,
    name: channelKey,
    provider: Provider.PAYMENTWALL,
    mode: ChannelMode.TEST,
    paymentwall: { projectKey: PROJECT_KEY, secretKey: SECRET_KEY, pingbackAllowlist: ["127.0.0.1/32"], apiBaseUrl: sim.url },
  });
  await registerProject(sim, pg, channel.pingbackPath);
}

export async function checkout(pg: Paygate, apiKey: string, channelKey: string, amountMinor = 999n) {
  return clients(pg, apiKey).payments.createCheckoutSession({
    channelKey,
    merchantUid: `order-${randomBytes(4).toString("hex")}`,
    amount: { amountMinor, currency: "USD" },
    orderName: "Gold Membership",
    customer: { uid: "buyer-1", email: "buyer@example.com" },
  });
}

/** The buyer pays on the simulator's hosted page; the simulator sends the signed type 0 pingback. */
export async function pay(sim: Sim, redirectUrl: string): Promise<void> {
  const page = await fetch(redirectUrl);
  const session = page.headers.get("x-sim-session");
  if (!page.ok || !session) throw new Error(`sim hosted page: ${page.status}`);
  const paid = await sim.control(`sessions/${session}/pay`);
  if (!paid.ok) throw new Error(`sim pay: ${paid.status}`);
}

/** The buyer pays, and Paymentwall's pingback is lost: only asking it tells. */
export async function paySilently(sim: Sim, redirectUrl: string): Promise<void> {
  const page = await fetch(redirectUrl);
  const session = page.headers.get("x-sim-session");
  if (!page.ok || !session) throw new Error(`sim hosted page: ${page.status}`);
  const paid = await sim.control(`sessions/${session}/pay-silently`);
  if (!paid.ok) throw new Error(`sim pay-silently: ${paid.status}`);
}

export async function waitStatus(pg: Paygate, apiKey: string, paymentId: string, status: PaymentStatus): Promise<void> {
  const { payments } = clients(pg, apiKey);
  for (let i = 0; i < 200; i++) {
    const p = await payments.getPayment({ lookup: { case: "paymentId", value: paymentId } });
    if (p.status === status) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${paymentId} did not reach ${PaymentStatus[status]}`);
}

export type Received = { headers: IncomingHttpHeaders; body: string };

/** A webhook receiver on loopback that keeps what it gets. */
export async function startReceiver(): Promise<{ url: string; received: Received[]; stop: () => void; next: () => Promise<Received> }> {
  const received: Received[] = [];
  const waiters: ((r: Received) => void)[] = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const r = { headers: req.headers, body };
      received.push(r);
      waiters.splice(0).forEach((w) => w(r));
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/hooks/paygate`,
    received,
    stop: () => server.close(),
    next: () =>
      new Promise((ok, fail) => {
        if (received.length) return ok(received[received.length - 1]);
        const timer = setTimeout(() => fail(new Error("no webhook arrived")), 15_000);
        waiters.push((r) => (clearTimeout(timer), ok(r)));
      }),
  };
}

/** Standard Webhooks: v1,<base64 HMAC-SHA256 of "id.timestamp.body" under the whsec_ secret>. */
export function signatureValid(r: Received, secret: string): boolean {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const signed = `${r.headers["webhook-id"]}.${r.headers["webhook-timestamp"]}.${r.body}`;
  const expected = `v1,${createHmac("sha256", key).update(signed).digest("base64")}`;
  return String(r.headers["webhook-signature"]).split(" ").includes(expected);
}

/** A page server on another loopback port: a second origin for the gRPC-Web tests. */
export async function startPageServer(files: Record<string, { type: string; body: string | Buffer }>) {
  const server = createServer((req, res) => {
    const file = files[(req.url ?? "/").split("?")[0]];
    if (!file) return void res.writeHead(404).end();
    res.writeHead(200, { "content-type": file.type }).end(file.body);
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  return { origin: `http://127.0.0.1:${(server.address() as { port: number }).port}`, stop: () => server.close() };
}

let browser: Browser | undefined;

/** Debian's Chromium, headless; Playwright downloads no browser of its own. */
export async function launch(): Promise<Browser> {
  browser ??= await chromium.launch({
    executablePath: process.env.PAYGATE_CHROMIUM ?? "/usr/bin/chromium",
    // As root (CI), Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--font-render-hinting=none"],
  });
  return browser;
}

export async function closeBrowser(): Promise<void> {
  await browser?.close();
  browser = undefined;
}

export const DESKTOP = { width: 1280, height: 860 };
export const PHONE = { width: 390, height: 844 };

export async function newPage(size = DESKTOP): Promise<Page> {
  const b = await launch();
  const context = await b.newContext({ viewport: size, deviceScaleFactor: 1, isMobile: size === PHONE, hasTouch: size === PHONE });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  return page;
}

/** A full-page screenshot into the screenshots folder. */
export async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Signs in on the console's form, as an operator does. */
export async function signIn(page: Page, pg: Paygate, credential: string, hash = "", merchantId = ""): Promise<void> {
  await page.goto(`${pg.grpc}/console/${hash}`);
  await page.getByLabel("API key or admin token").fill(credential);
  if (merchantId) await page.getByLabel("Merchant id").fill(merchantId);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

/** Marks the document, so a test can tell later that the page never reloaded. */
export async function markDocument(page: Page): Promise<() => Promise<boolean>> {
  await page.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));
  return () => page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload === true);
}
