// The page's chrome: element lookups, toast and screen-reader announcements, the composer's
// height, scrolling, the phone drawer and the model picker.

import { listModels } from "./api.js";

export const $ = (id) => document.getElementById(id);
export const ui = {
  app: $("app"), main: $("main"), log: $("log"), messages: $("messages"), empty: $("empty-state"),
  title: $("chat-title"), model: $("model"), composer: $("composer"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"), toast: $("toast"), announcer: $("announcer"),
  menu: $("menu-toggle"), scrim: $("scrim"), sidebarClose: $("sidebar-close"), newChat: $("new-chat"),
};
const MODEL_KEY = "relay.model";

export function showEmptyState(empty) {
  ui.empty.hidden = !empty;
  if (empty) document.title = "relay";
}

export function isNearBottom() {
  return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 120;
}

export function scrollToBottom(force = false) {
  if (force || isNearBottom()) ui.log.scrollTop = ui.log.scrollHeight;
}

export function setPrompt(text) {
  ui.prompt.value = text;
  resizePrompt();
}

export function resizePrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 240)}px`;
}

let toastTimer = 0;
export function showToast(message) {
  ui.toast.textContent = message;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 6000);
}

// Tell screen readers about a state change (the polite `role=status` region).
export function announce(message) {
  ui.announcer.textContent = "";
  setTimeout(() => { ui.announcer.textContent = message; }, 50);
}

// Say "Copied" on a copy button for a moment (and to screen readers).
export function flash(button, ok) {
  const label = button.querySelector(".label") || button;
  const before = label.textContent;
  label.textContent = ok ? "Copied" : "Copy failed";
  button.classList.add("flashed");
  announce(ok ? "Copied to the clipboard." : "Could not copy.");
  setTimeout(() => {
    label.textContent = before;
    button.classList.remove("flashed");
  }, 1500);
}

export function setSidebarOpen(open) {
  ui.app.classList.toggle("sidebar-open", open);
  ui.menu.setAttribute("aria-expanded", String(open));
  ui.scrim.hidden = !open;
  ui.main.inert = open; // the drawer is modal on a phone: keep focus inside it
  if (open) ui.newChat.focus();
}

// The phone drawer's controls: the menu button, its close button, the scrim and Escape.
export function bindDrawer() {
  ui.menu.addEventListener("click", () => setSidebarOpen(!ui.app.classList.contains("sidebar-open")));
  ui.sidebarClose.addEventListener("click", () => { setSidebarOpen(false); ui.menu.focus(); });
  ui.scrim.addEventListener("click", () => setSidebarOpen(false));
  document.addEventListener("keydown", (event) => {
    // A dialog takes Escape for itself; the drawer behind it stays open.
    const dialogOpen = document.querySelector("dialog[open]");
    if (event.key === "Escape" && !dialogOpen && ui.app.classList.contains("sidebar-open")) {
      setSidebarOpen(false);
      ui.menu.focus();
    }
  });
  $("conversation-list").addEventListener("click", (event) => {
    if (event.target.closest(".conversation-link")) setSidebarOpen(false);
  });
}

// Fill the picker from GET /v1/models (the default first), keeping the user's last choice.
export async function loadModels() {
  let models = [];
  try {
    models = await listModels();
  } catch (error) {
    showToast(`Could not load the model list: ${error.message}`);
  }
  const saved = window.localStorage.getItem(MODEL_KEY);
  const options = models.map((id) => new Option(id, id, false, id === saved));
  if (!options.length) options.push(new Option("Default model", ""));
  ui.model.replaceChildren(...options);
}

export function rememberModel() {
  window.localStorage.setItem(MODEL_KEY, ui.model.value);
}
