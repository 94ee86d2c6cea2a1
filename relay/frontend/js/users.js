// An admin's users panel: every user, creating one, disabling one, giving one a new password.

import { createUser, listUsers, updateUser } from "./api.js";
import { actionButton, cell, confirmAction, Panel, timeCell, whileBusy } from "./panels.js";

const $ = (id) => document.getElementById(id);

export class UsersPanel extends Panel {
  constructor() {
    super("users-dialog");
    this.me = null;
    this.list = $("users-list");
    this.form = $("user-form");
    this.passwordDialog = $("password-dialog");
    this.passwordForm = $("password-form");
    this.passwordError = $("password-error");
    this.passwordFor = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#create();
    });
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      const item = button.closest("tr");
      if (button.classList.contains("disable")) this.#disable(item);
      else if (button.classList.contains("enable")) this.#enable(item);
      else if (button.classList.contains("set-password")) this.#askPassword(item);
    });
    this.passwordForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#savePassword();
    });
    $("password-cancel").addEventListener("click", () => this.passwordDialog.close());
    this.passwordDialog.addEventListener("close", () => this.#passwordClosed());
  }

  setMe(name) {
    this.me = name;
  }

  async open() {
    super.open();
    await this.refresh();
  }

  onClose() {
    this.form.reset();
  }

  close() {
    if (this.passwordDialog.open) this.passwordDialog.close();
    super.close();
  }

  async refresh() {
    let users;
    try {
      users = await listUsers();
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.list.replaceChildren(...users.map((user) => this.#row(user)));
  }

  #row(user) {
    const item = document.createElement("tr");
    item.dataset.name = user.name;
    const you = user.name === this.me;
    const actions = document.createElement("div");
    actions.className = "row-actions";
    actions.append(actionButton("set-password", "Set password", `Set password for ${user.name}`));
    if (user.disabled) actions.append(actionButton("enable", "Enable", `Enable ${user.name}`));
    else if (!you) actions.append(actionButton("disable", "Disable", `Disable ${user.name}`));
    item.append(
      cell(you ? `${user.name} (you)` : user.name),
      cell(user.admin ? "Admin" : "User"),
      cell(user.disabled ? "Disabled" : "Active", user.disabled ? "muted" : ""),
      timeCell(user.created_at, "—"),
      cell(actions),
    );
    return item;
  }

  async #create() {
    this.showError("");
    const username = $("user-name").value.trim();
    const fields = { username, password: $("user-password").value, admin: $("user-admin").checked };
    try {
      await whileBusy(this.form, () => createUser(fields));
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.form.reset();
    await this.refresh();
    this.announce(`Created the user ${username}.`);
    $("user-name").focus();
  }

  async #disable(item) {
    const name = item.dataset.name;
    const confirmed = await confirmAction(
      `Disable ${name}?`,
      `${name} is signed out everywhere at once, their open streams end and their API keys stop working.`,
      "Disable",
    );
    if (!confirmed) return;
    try {
      await updateUser(name, { disabled: true });
    } catch (error) {
      this.showError(error.message);
      item.querySelector(".disable")?.focus();
      return;
    }
    await this.refresh();
    this.announce(`Disabled ${name}.`);
    const row = this.list.querySelector(`tr[data-name="${CSS.escape(name)}"] .set-password`);
    (row || $("user-name")).focus();
  }

  async #enable(item) {
    const name = item.dataset.name;
    try {
      await updateUser(name, { disabled: false });
    } catch (error) {
      this.showError(error.message);
      return;
    }
    await this.refresh();
    this.announce(`Enabled ${name}.`);
    this.list.querySelector(`tr[data-name="${CSS.escape(name)}"] .disable`)?.focus();
  }

  #askPassword(item) {
    this.passwordFor = item.dataset.name;
    $("password-title").textContent = `New password for ${this.passwordFor}`;
    $("password-username").value = this.passwordFor;
    this.passwordError.textContent = "";
    this.passwordDialog.showModal();
    $("new-password").focus();
  }

  async #savePassword() {
    const name = this.passwordFor;
    this.passwordError.textContent = "";
    try {
      await whileBusy(this.passwordForm, () => updateUser(name, { password: $("new-password").value }));
    } catch (error) {
      this.passwordError.textContent = error.message;
      return;
    }
    this.passwordDialog.close();
    this.announce(`Set a new password for ${name}. Their sessions have ended.`);
  }

  #passwordClosed() {
    this.passwordForm.reset();
    const name = this.passwordFor;
    this.passwordFor = null;
    const button = name && this.list.querySelector(`tr[data-name="${CSS.escape(name)}"] .set-password`);
    if (button && this.dialog.open) button.focus();
  }
}
