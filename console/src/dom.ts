// A few DOM helpers: the console builds its pages by hand, with real buttons, links and labels.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | boolean | number | EventListener | undefined>;

/** An element with attributes (`on*` are listeners; `false`/`undefined` are left out) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

let nextId = 0;
/** A unique id for label/for and aria-describedby pairs. */
export function uid(prefix: string): string {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/**
 * A random key for a write's idempotency (128 bits, hex). crypto.getRandomValues works on any page;
 * crypto.randomUUID exists only in secure contexts, and the console is often opened over plain HTTP
 * on the internal port (http://10.0.0.5:50051/console), where it is undefined.
 */
export function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A labelled input; `name` is the request field it feeds, so a field violation can find it. */
export function field(
  label: string,
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
  hint?: string,
): HTMLElement {
  input.id ||= uid("f");
  const hintEl = hint ? h("small", { class: "hint", id: `${input.id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, hintEl);
}

export function input(name: string, attrs: Attrs = {}): HTMLInputElement {
  return h("input", { name, type: "text", autocomplete: "off", spellcheck: "false", ...attrs });
}

export function button(label: string, onclick: (e: Event) => void, attrs: Attrs = {}): HTMLButtonElement {
  return h("button", { type: "button", ...attrs, onclick: onclick as EventListener }, label);
}

/** A table from a header row and rows of cells. */
export function table(caption: string, head: string[], rows: Child[][]): HTMLElement {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { "data-label": head[i] }, c))))),
    ),
  );
}

/** A definition list from label/value pairs; empty values are left out. */
export function details(pairs: [string, Child][]): HTMLElement {
  return h(
    "dl",
    { class: "details" },
    pairs.filter(([, v]) => v !== "" && v !== null && v !== undefined).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

/** Asks before something that cannot be undone; resolves true only on the confirm button. */
export function confirmDialog(title: string, body: Child[], confirmLabel: string): Promise<boolean> {
  return new Promise((resolve) => {
    const dialog = h("dialog", { "aria-labelledby": "dialog-title" });
    const done = (ok: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(ok);
    };
    dialog.append(
      h("h2", { id: "dialog-title" }, title),
      h("div", {}, body),
      h(
        "div",
        { class: "actions" },
        button("Cancel", () => done(false)),
        button(confirmLabel, () => done(true), { class: "danger" }),
      ),
    );
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    (dialog.querySelector("button") as HTMLButtonElement).focus();
  });
}
