// The API keys panel: the caller's keys (name and prefix, never the secret), a new key shown
// once with a Copy button, and revoking a key behind a confirmation.

import { createKey, listKeys, revokeKey } from "./api.js";
import { copyText } from "./markdown.js";
import { actionButton, cell, confirmAction, Panel, timeCell, whileBusy } from "./panels.js";

const $ = (id) => document.getElementById(id);

export class KeysPanel extends Panel {
  constructor() {
    super("keys-dialog");
    this.list = $("keys-list");
    this.table = $("keys-table");
    this.empty = $("no-keys");
    this.form = $("key-form");
    this.newKey = $("new-key");
    this.secret = $("new-key-value");
    this.copyButton = $("copy-key");
    this.newKeyId = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#create();
    });
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest(".revoke");
      if (button) this.#revoke(button.closest("tr"));
    });
    this.copyButton.addEventListener("click", () => this.#copy());
  }

  async open() {
    this.#forgetSecret();
    super.open();
    await this.refresh();
  }

  onClose() {
    this.#forgetSecret();
    this.form.reset();
  }

  async refresh() {
    let keys;
    try {
      keys = await listKeys();
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.list.replaceChildren(...keys.map((key) => row(key)));
    this.table.hidden = !keys.length;
    this.empty.hidden = keys.length > 0;
  }

  async #create() {
    this.showError("");
    const fields = {};
    const name = $("key-name").value.trim();
    const days = $("key-expires").value;
    if (name) fields.name = name;
    if (days) fields.expires_days = Number(days);
    let created;
    try {
      created = await whileBusy(this.form, () => createKey(fields));
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.form.reset();
    this.newKeyId = created.id;
    this.secret.value = created.key;
    this.newKey.hidden = false;
    this.copyButton.textContent = "Copy";
    await this.refresh();
    this.secret.focus();
    this.secret.select();
  }

  async #copy() {
    const ok = await copyText(this.secret.value);
    this.copyButton.textContent = ok ? "Copied" : "Copy failed";
    this.announce(ok ? "The key is on the clipboard." : "Could not copy: select the key and copy it.");
  }

  async #revoke(item) {
    const name = item.dataset.name;
    const confirmed = await confirmAction(
      "Revoke this API key?",
      `Programs using “${name}” stop working at once, and their open streams end.`,
      "Revoke",
    );
    if (!confirmed) return;
    const next = item.nextElementSibling || item.previousElementSibling;
    try {
      await revokeKey(item.dataset.id);
    } catch (error) {
      this.showError(error.message);
      item.querySelector(".revoke")?.focus();
      return;
    }
    if (item.dataset.id === this.newKeyId) this.#forgetSecret();
    await this.refresh();
    this.announce(`Revoked “${name}”.`);
    const target = next && this.list.querySelector(`tr[data-id="${CSS.escape(next.dataset.id)}"] .revoke`);
    (target || $("key-name")).focus();
  }

  #forgetSecret() {
    this.secret.value = "";
    this.newKey.hidden = true;
    this.newKeyId = null;
  }
}

function row(key) {
  const item = document.createElement("tr");
  item.dataset.id = key.id;
  const label = key.name || `${key.prefix}…`;
  item.dataset.name = label;
  const prefix = document.createElement("code");
  prefix.textContent = `${key.prefix}…`;
  item.append(
    cell(key.name || "Unnamed"),
    cell(prefix),
    timeCell(key.created_at, "—"),
    timeCell(key.last_used_at, "Never"),
    timeCell(key.expires_at, "Never"),
    key.revoked
      ? cell("Revoked", "muted")
      : cell(actionButton("revoke", "Revoke", `Revoke the key “${label}”`)),
  );
  if (key.revoked) item.classList.add("revoked");
  return item;
}
