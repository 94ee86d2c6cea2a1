// The conversation list: links to open, inline rename, delete behind a confirmation dialog.

import { deleteConversation, listConversations, renameConversation } from "./api.js";
import { icon } from "./icons.js";

export class Sidebar {
  // callbacks: onRenamed(conversation), onDeleted(id), onError(error)
  constructor(callbacks) {
    this.callbacks = callbacks;
    this.list = document.getElementById("conversation-list");
    this.empty = document.getElementById("no-conversations");
    this.dialog = document.getElementById("confirm-delete");
    this.activeId = null;
    this.conversations = [];
    this.list.addEventListener("click", (event) => this.#onClick(event));
  }

  async refresh() {
    try {
      this.conversations = await listConversations();
    } catch (error) {
      this.callbacks.onError(error);
      return;
    }
    this.#render();
  }

  // Forget the list (signed out), so the next user never sees it.
  clear() {
    this.conversations = [];
    this.activeId = null;
    this.list.querySelector(".rename-input")?.remove();
    this.#render();
  }

  setActive(id) {
    this.activeId = id;
    for (const link of this.list.querySelectorAll(".conversation-link")) {
      const current = link.closest("li").dataset.id === id;
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  titleOf(id) {
    return this.conversations.find((c) => c.id === id)?.title;
  }

  #render() {
    if (this.list.querySelector(".rename-input")) return; // never pull the rug from under a rename
    const focused = document.activeElement;
    const focusedId = this.list.contains(focused) ? focused.closest("li").dataset.id : null;
    const focusedSelector = focusedId ? `.${[...focused.classList].join(".")}` : null;
    const items = this.conversations.map((conversation) => this.#item(conversation));
    this.list.replaceChildren(...items);
    this.empty.hidden = items.length > 0;
    this.setActive(this.activeId);
    if (focusedId) {
      const item = this.list.querySelector(`li[data-id="${CSS.escape(focusedId)}"]`);
      item?.querySelector(focusedSelector)?.focus();
    }
  }

  #item(conversation) {
    const item = document.createElement("li");
    item.className = "conversation";
    item.dataset.id = conversation.id;
    const link = document.createElement("a");
    link.className = "conversation-link";
    link.href = `#/c/${encodeURIComponent(conversation.id)}`;
    link.textContent = conversation.title || "New chat";
    link.title = conversation.title || "";
    item.append(
      link,
      iconButton("rename", "pencil", `Rename “${conversation.title}”`),
      iconButton("delete", "trash", `Delete “${conversation.title}”`),
    );
    return item;
  }

  #onClick(event) {
    const item = event.target.closest("li.conversation");
    if (!item) return;
    if (event.target.closest(".rename")) this.#startRename(item);
    else if (event.target.closest(".delete")) this.#confirmDelete(item);
  }

  #startRename(item) {
    const link = item.querySelector(".conversation-link");
    const input = document.createElement("input");
    input.className = "rename-input";
    input.value = link.textContent;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title; Enter to save, Escape to cancel");
    item.classList.add("renaming");
    link.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      input.replaceWith(link);
      item.classList.remove("renaming");
      link.focus();
      if (!save || !title || title === link.textContent) return;
      try {
        const conversation = await renameConversation(item.dataset.id, title);
        this.callbacks.onRenamed(conversation);
        await this.refresh();
        this.list.querySelector(`li[data-id="${CSS.escape(conversation.id)}"] .conversation-link`)?.focus();
      } catch (error) {
        this.callbacks.onError(error);
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  #confirmDelete(item) {
    const title = item.querySelector(".conversation-link").textContent;
    document.getElementById("confirm-text").textContent = `“${title}” and all its messages will be deleted.`;
    this.dialog.returnValue = "cancel";
    this.dialog.addEventListener("close", async () => {
      if (this.dialog.returnValue !== "delete") {
        item.querySelector(".delete").focus();
        return;
      }
      const next = item.nextElementSibling || item.previousElementSibling;
      try {
        await deleteConversation(item.dataset.id);
      } catch (error) {
        this.callbacks.onError(error);
        return;
      }
      this.callbacks.onDeleted(item.dataset.id);
      await this.refresh();
      const target = next && this.list.querySelector(`li[data-id="${CSS.escape(next.dataset.id)}"] .conversation-link`);
      (target || document.getElementById("new-chat")).focus();
    }, { once: true });
    this.dialog.showModal();
  }
}

function iconButton(className, iconName, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `icon-button ${className}`;
  button.setAttribute("aria-label", label);
  button.title = label;
  button.append(icon(iconName));
  return button;
}
