// One message in the log. An assistant message moves through the states
// waiting -> streaming (-> reconnecting -> streaming) -> completed | cancelled | failed,
// or waiting (or streaming) -> refused (a limit would not let it start, or its stream reopen;
// Retry starts it again, after what is shown),
// shown in `data-status` and in words, so both people and tests can see where it is.

import { icon } from "./icons.js";
import { refusalText } from "./limits.js";
import { renderMarkdown } from "./markdown.js";

const BUSY = new Set(["waiting", "streaming", "reconnecting"]);
const NOTES = {
  waiting: "Waiting for the model…",
  reconnecting: "Connection lost. Reconnecting…",
  cancelled: "Stopped.",
};
const views = new WeakMap();

export function viewOf(element) {
  const item = element.closest(".message");
  return item ? views.get(item) : undefined;
}

export class MessageView {
  constructor(role, { content = "", status = "completed", error = null, ticketId = null } = {}) {
    this.role = role;
    this.text = content;
    this.frame = 0;
    this.element = make("article", `message ${role}`);
    this.ticketId = ticketId;
    views.set(this.element, this);

    const avatar = make("div", "avatar", role === "user" ? "You" : "R");
    avatar.setAttribute("aria-hidden", "true");
    const body = make("div", "message-body");
    const who = make("span", "visually-hidden", role === "user" ? "You said:" : "relay answered:");
    this.content = make("div", role === "user" ? "content plain" : "content markdown");
    body.append(who, this.content);

    if (role === "assistant") {
      this.note = make("p", "note");
      this.note.hidden = true;
      // Where the answer waits in the relay's queue; read out as it changes.
      this.queueNote = make("p", "queue-note");
      this.queueNote.setAttribute("role", "status");
      this.queueNote.hidden = true;
      this.errorBox = make("p", "error");
      this.errorBox.hidden = true;
      this.actions = make("div", "actions");
      this.actions.append(
        button("copy-answer", "copy", "Copy", "Copy the answer's Markdown"),
        button("regenerate", "refresh", "Regenerate", "Regenerate the answer"),
        button("retry-start", "refresh", "Retry", "Retry starting the answer"),
      );
      body.append(this.note, this.queueNote, this.errorBox, this.actions);
    } else {
      this.content.textContent = content;
    }
    this.element.append(avatar, body);
    if (role === "assistant") this.setStatus(status, error);
  }

  get ticketId() {
    return this.element.dataset.ticket || null;
  }

  set ticketId(id) {
    if (id) this.element.dataset.ticket = id;
  }

  get busy() {
    return BUSY.has(this.status);
  }

  setStatus(status, error = null) {
    this.status = status;
    this.element.dataset.status = status;
    this.content.setAttribute("aria-busy", String(this.busy));
    const note = status === "cancelled" && !this.text ? "Stopped before any text arrived." : NOTES[status];
    this.note.hidden = !note;
    this.note.className = `note note-${status}`;
    this.note.textContent = note || "";
    this.queueNote.hidden = true; // until the relay says where it waits again
    // A stop the user asked for carries no error; one forced on them (signed out) says why.
    const showError = status === "failed" || (status === "cancelled" && Boolean(error?.message));
    const refused = status === "refused";
    this.errorBox.hidden = !showError && !refused;
    this.errorBox.textContent = showError ? errorText(error) : "";
    if (refused) this.errorBox.append(refusedText(error, Boolean(this.text)));
    this.actions.hidden = this.busy;
    this.actions.querySelector(".copy-answer").hidden = !this.text;
    this.actions.querySelector(".regenerate").hidden = refused;
    this.actions.querySelector(".retry-start").hidden = !refused;
    if (!this.busy || this.text) this.render();
  }

  // The relay's queue position (1 = next) of an answer not started yet.
  setQueued(position) {
    if (this.status !== "waiting") return;
    const ahead = position - 1;
    this.note.hidden = true;
    this.queueNote.hidden = false;
    this.queueNote.textContent = ahead < 1 ? "Waiting for the model: next"
      : `Waiting for the model: ${ahead} ahead`;
  }

  appendDelta(delta) {
    this.text += delta;
    if (this.status !== "streaming") this.setStatus("streaming");
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
  }

  finish(result) {
    this.setStatus(result.status || "failed", result.error);
  }

  render() {
    if (this.role !== "assistant") return;
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    renderMarkdown(this.content, this.text, { streaming: this.busy });
  }
}

function errorText(error) {
  const message = (error && error.message) || "The answer failed for an unknown reason.";
  return `Error: ${message}`;
}

// "Could not start: Daily token quota reached. Try again in 5 hours." and the relay's reason.
function refusedText(error, started = false) {
  const text = document.createDocumentFragment();
  text.append(`${started ? "Could not go on" : "Could not start"}: ${refusalText(error || {})}`, " ",
    make("span", "refusal-detail", (error && error.message) || ""));
  return text;
}

function make(tag, className, text) {
  const element = document.createElement(tag);
  element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function button(className, iconName, label, description) {
  const element = make("button", `small-button ${className}`);
  element.type = "button";
  element.append(icon(iconName), make("span", "label", label));
  element.setAttribute("aria-label", description);
  return element;
}
