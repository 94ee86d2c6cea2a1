// What the account panels share: a modal panel that gives focus back to its opener, a yes/no
// confirmation, error lines that screen readers hear, and the cells of the panels' tables.

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export class Panel {
  constructor(id) {
    this.dialog = document.getElementById(id);
    this.error = this.dialog.querySelector(".form-error");
    this.status = this.dialog.querySelector(".panel-status");
    this.opener = null;
    this.dialog.querySelector(".panel-close").addEventListener("click", () => this.close());
    this.dialog.addEventListener("close", () => {
      this.onClose();
      this.opener?.focus();
      this.opener = null;
    });
  }

  open() {
    this.opener = document.activeElement;
    this.showError("");
    this.dialog.showModal();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  // Subclasses forget what must not outlive the panel (a new key, a typed password).
  onClose() {}

  showError(message) {
    this.error.textContent = message;
  }

  // The page's own announcer is outside the modal panel, so inert: speak from inside it.
  announce(message) {
    this.status.textContent = "";
    setTimeout(() => { this.status.textContent = message; }, 50);
  }
}

// Ask before something that cannot be undone; resolves true if the user confirmed.
export function confirmAction(title, text, action) {
  const dialog = document.getElementById("confirm-action");
  const opener = document.activeElement;
  document.getElementById("confirm-action-title").textContent = title;
  document.getElementById("confirm-action-text").textContent = text;
  document.getElementById("confirm-action-button").textContent = action;
  dialog.returnValue = "cancel";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const confirmed = dialog.returnValue === "confirm";
      if (!confirmed) opener?.focus();
      resolve(confirmed);
    }, { once: true });
    dialog.showModal();
  });
}

export function cell(content, className = "") {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(content);
  return td;
}

// `when` is what the relay sends: seconds since the epoch (or an ISO string); null is `missing`.
export function timeCell(when, missing) {
  const date = typeof when === "number" ? new Date(when * 1000) : new Date(when);
  if (when === null || when === undefined || Number.isNaN(date.getTime())) return cell(missing, "muted");
  const time = document.createElement("time");
  time.dateTime = date.toISOString();
  time.textContent = dateFormat.format(date);
  return cell(time);
}

export function actionButton(className, text, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `small-button ${className}`;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  return button;
}

// Disable a form's submit button while its request runs, so a double click sends once.
export async function whileBusy(form, work) {
  const submit = form.querySelector("[type=submit]");
  const hadFocus = document.activeElement === submit;
  submit.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    submit.disabled = false;
    form.setAttribute("aria-busy", "false");
    if (hadFocus && document.activeElement === document.body) submit.focus(); // disabling dropped it
  }
}
