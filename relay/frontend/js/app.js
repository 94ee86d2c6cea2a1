// The chat page's controller: wires the composer, the message log, the model picker and the
// conversation list to the relay (POST /new, then a plain EventSource on the ticket).

import { Account } from "./account.js";
import { ApiError, cancelTicket, createTicket, getConversation } from "./api.js";
import { isRefusal, refusalText } from "./limits.js";
import { codeOfCopyButton, copyText } from "./markdown.js";
import { MessageView, viewOf } from "./messages.js";
import { Sidebar } from "./sidebar.js";
import { TicketStream } from "./stream.js";
import {
  $, announce, bindDrawer, flash, isNearBottom, loadModels, rememberModel, resizePrompt,
  scrollToBottom, setPrompt, setSidebarOpen, showEmptyState, showToast, ui,
} from "./ui.js";

document.documentElement.dataset.started = "true"; // every import loaded (see boot.js)
// A stream ended because its user's session did: the next request would only be refused.
const SESSION_ENDINGS = new Set(["session_ended", "user_disabled"]);
const ANNOUNCEMENTS = {
  completed: "The answer is complete.",
  cancelled: "Generation stopped.",
  failed: "The answer failed.",
};

const state = {
  conversationId: null,
  loadCount: 0, // bumped on every navigation, so late answers for an old view are dropped
  stream: null,
  view: null,
  stopRequested: false,
};

const sidebar = new Sidebar({
  onRenamed: (conversation) => {
    if (conversation.id === state.conversationId) ui.title.textContent = conversation.title;
  },
  onDeleted: (id) => {
    if (id === state.conversationId) navigate(null);
  },
  onError: (error) => showToast(error.message),
});
const account = new Account({ enter: startChat, leave: resetChat });

// ---- navigation --------------------------------------------------------------------------

function conversationFromHash() {
  const match = window.location.hash.match(/^#\/c\/([A-Za-z0-9_-]+)$/);
  return match ? match[1] : null;
}

function navigate(id) {
  if (id) {
    window.location.hash = `#/c/${id}`;
  } else {
    window.history.pushState(null, "", window.location.pathname + window.location.search);
    openConversation(null);
  }
}

async function openConversation(id) {
  detachStream();
  const load = ++state.loadCount;
  state.conversationId = id;
  sidebar.setActive(id);
  ui.messages.replaceChildren();
  ui.title.textContent = (id && sidebar.titleOf(id)) || "New chat";
  setBusy(false);
  showEmptyState(!id);
  if (!id) return;
  let conversation;
  try {
    conversation = await getConversation(id);
  } catch (error) {
    if (load !== state.loadCount) return;
    showToast(error.status === 404 ? "That conversation no longer exists." : error.message);
    if (error.status === 404) navigate(null);
    return;
  }
  if (load !== state.loadCount) return;
  ui.title.textContent = conversation.title;
  document.title = `${conversation.title} · relay`;
  const active = conversation.active_ticket;
  for (const message of conversation.messages) {
    if (active && message.ticket_id === active.id) continue;
    appendMessage(new MessageView(message.role, {
      content: message.content, status: message.status || "completed",
      error: message.error, ticketId: message.ticket_id,
    }));
  }
  if (active) {
    attachStream(active, appendMessage(new MessageView("assistant", { status: "waiting" })));
  } else if (conversation.messages.at(-1)?.role === "user") {
    // A turn stopped before any text arrived stores no answer; offer Regenerate all the same.
    appendMessage(new MessageView("assistant", { status: "cancelled" }));
  }
  scrollToBottom(true);
}

// ---- sending, streaming, stopping ---------------------------------------------------------

async function send(prompt) {
  if (state.view || !prompt.trim()) return;
  const load = state.loadCount;
  const user = appendMessage(new MessageView("user", { content: prompt }));
  const view = appendMessage(new MessageView("assistant", { status: "waiting" }));
  clearRefusal();
  showEmptyState(false);
  setPrompt("");
  setBusy(true, view);
  scrollToBottom(true);
  const fields = { prompt, model: ui.model.value || undefined };
  if (state.conversationId) fields.conversation_id = state.conversationId;
  let ticket;
  try {
    ticket = await createTicket(fields);
  } catch (error) {
    if (load !== state.loadCount) return;
    user.element.remove();
    view.element.remove();
    showEmptyState(!ui.messages.children.length);
    setBusy(false);
    setPrompt(prompt);
    if (isRefusal(error)) showRefusal(error);
    else showToast(error.message);
    return;
  }
  if (load !== state.loadCount) return; // the user navigated away; the ticket waits in its conversation
  if (!state.conversationId) {
    state.conversationId = ticket.conversation_id;
    window.history.replaceState(null, "", `#/c/${ticket.conversation_id}`);
  }
  sidebar.refresh().then(() => {
    if (load !== state.loadCount) return;
    sidebar.setActive(state.conversationId);
    const title = sidebar.titleOf(state.conversationId);
    if (title) {
      ui.title.textContent = title;
      document.title = `${title} · relay`;
    }
  });
  attachStream(ticket, view);
}

async function regenerate(previous) {
  if (state.view || !state.conversationId) return;
  const load = state.loadCount;
  previous.element.hidden = true;
  clearRefusal();
  const view = appendMessage(new MessageView("assistant", { status: "waiting" }));
  setBusy(true, view);
  let ticket;
  try {
    ticket = await createTicket({
      conversation_id: state.conversationId, regenerate: true, model: ui.model.value || undefined,
    });
  } catch (error) {
    if (load !== state.loadCount) return;
    view.element.remove();
    previous.element.hidden = false;
    setBusy(false);
    if (isRefusal(error)) showRefusal(error);
    else showToast(error.message);
    return;
  }
  if (load !== state.loadCount) return;
  previous.element.remove();
  attachStream(ticket, view);
}

function attachStream(ticket, view, afterId = 0) {
  if (state.view !== view) setBusy(true, view);
  view.ticketId = ticket.id;
  view.ticket = ticket; // for Retry, should a limit refuse to start it
  const stream = new TicketStream(ticket, {
    onDelta: (delta) => {
      const follow = isNearBottom();
      view.appendDelta(delta);
      if (follow) scrollToBottom();
    },
    onQueued: (position) => view.setQueued(position),
    onConnected: () => {
      if (view.status === "reconnecting") {
        view.setStatus(view.text ? "streaming" : "waiting");
        announce("Reconnected.");
      }
    },
    onReconnecting: () => {
      if (view.status !== "reconnecting") announce("Connection lost. Reconnecting.");
      view.setStatus("reconnecting");
    },
    onDone: (result) => {
      view.finish(result);
      state.stream = null;
      setBusy(false);
      if (SESSION_ENDINGS.has(result.error?.code)) {
        announce(result.error.message);
        return;
      }
      announce(ANNOUNCEMENTS[view.status] || "");
      sidebar.refresh();
    },
    onRefused: (error, lastEventId) => {
      view.resumeFrom = lastEventId; // Retry goes on after what is shown
      view.setStatus("refused", error);
      state.stream = null;
      setBusy(false);
      announce(`${view.text ? "Could not go on" : "Could not start"}: ${refusalText(error)}`);
    },
  });
  state.stream = stream;
  stream.start(afterId);
  if (state.stopRequested) stop();
}

// Start (or go on streaming) an answer a limit refused.
function retryStart(view) {
  if (state.view || !view.ticket) return;
  view.setStatus(view.text ? "streaming" : "waiting");
  attachStream(view.ticket, view, view.resumeFrom || 0);
  ui.stop.focus();
}

// A limit refused a new message (POST /new said 429): say which and when to try again, in the
// conversation, where the message would have been; the prompt is back in the composer.
function showRefusal(error) {
  clearRefusal();
  const notice = document.createElement("div");
  notice.className = "refusal";
  notice.dataset.code = error.code;
  const title = document.createElement("p");
  title.className = "refusal-title";
  title.textContent = refusalText(error);
  const detail = document.createElement("p");
  detail.className = "refusal-detail";
  detail.textContent = error.message;
  notice.append(title, detail);
  ui.messages.append(notice);
  showEmptyState(false);
  scrollToBottom(true);
}

function clearRefusal() {
  for (const notice of ui.messages.querySelectorAll(".refusal")) notice.remove();
}

function detachStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

async function stop() {
  state.stopRequested = true;
  ui.stop.disabled = true;
  ui.stop.setAttribute("aria-label", "Stopping…");
  if (!state.stream) return; // still creating the ticket: attachStream() stops it when it exists
  try {
    await cancelTicket(state.stream.id);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) showToast(error.message);
    if (state.view) resetStopButton();
  }
}

// ---- page state ---------------------------------------------------------------------------

function setBusy(busy, view = null) {
  state.view = busy ? view : null;
  state.stopRequested = false;
  ui.app.dataset.busy = String(busy);
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  resetStopButton();
  const focusWasOnButton = document.activeElement === ui.send || document.activeElement === ui.stop;
  if (focusWasOnButton) (busy ? ui.stop : ui.send).focus();
  if (focusWasOnButton && !busy) ui.prompt.focus();
}

function resetStopButton() {
  ui.stop.disabled = false;
  ui.stop.setAttribute("aria-label", "Stop generating");
}

function appendMessage(view) {
  ui.messages.append(view.element);
  return view;
}

// ---- events -------------------------------------------------------------------------------

function bindEvents() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send(ui.prompt.value);
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!state.view) send(ui.prompt.value);
    } else if (event.key === "Escape" && state.view) {
      event.preventDefault();
      stop();
    }
  });
  ui.prompt.addEventListener("input", resizePrompt);
  ui.stop.addEventListener("click", stop);
  ui.model.addEventListener("change", rememberModel);
  ui.newChat.addEventListener("click", () => {
    setSidebarOpen(false);
    navigate(null);
    ui.prompt.focus();
  });
  bindDrawer();
  $("suggestions").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button) send(button.textContent);
  });
  ui.messages.addEventListener("click", onMessageClick);
  window.addEventListener("hashchange", () => {
    const id = conversationFromHash();
    if (id !== state.conversationId) openConversation(id);
  });
}

async function onMessageClick(event) {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("copy-code")) {
    flash(button, await copyText(codeOfCopyButton(button)));
  } else if (button.classList.contains("copy-answer")) {
    flash(button, await copyText(viewOf(button).text));
  } else if (button.classList.contains("regenerate")) {
    regenerate(viewOf(button));
  } else if (button.classList.contains("retry-start")) {
    retryStart(viewOf(button));
  }
}

// Load the chat for whoever is calling (everyone in open mode, the signed-in user otherwise).
async function startChat() {
  document.documentElement.dataset.ready = "false";
  await Promise.all([loadModels(), sidebar.refresh()]);
  await openConversation(conversationFromHash());
  ui.prompt.focus();
  document.documentElement.dataset.ready = "true";
}

// Signed out: forget the conversation, its stream and the list, so the next user sees none.
function resetChat() {
  detachStream();
  state.loadCount += 1;
  state.conversationId = null;
  setBusy(false);
  setSidebarOpen(false);
  ui.messages.replaceChildren();
  ui.title.textContent = "New chat";
  sidebar.clear();
  setPrompt("");
  showEmptyState(true);
  if (window.location.hash) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

async function main() {
  bindEvents();
  await account.start();
  document.documentElement.dataset.ready = "true";
}

main();
