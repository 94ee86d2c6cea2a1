// Markdown to safe DOM: marked parses, DOMPurify sanitises (model output is untrusted input),
// highlight.js colours code blocks, and each block gets a copy button.

import { Marked } from "/static/vendor/marked.esm.js";
import DOMPurify from "/static/vendor/purify.es.js";
import hljs from "/static/vendor/highlight.min.js";

const marked = new Marked({ gfm: true, breaks: false });
hljs.configure({ ignoreUnescapedHTML: true });

const PURIFY_OPTIONS = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option"],
  FORBID_ATTR: ["style", "id", "name"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// Render `text` into `container`; while streaming, unlabelled code is not auto-detected (slow)
// and a blinking cursor is placed where the next token will appear.
export function renderMarkdown(container, text, { streaming = false } = {}) {
  const fragment = DOMPurify.sanitize(marked.parse(text), PURIFY_OPTIONS);
  for (const pre of fragment.querySelectorAll("pre")) decorateCodeBlock(pre, streaming);
  container.replaceChildren(fragment);
  if (streaming) appendCursor(container);
}

function decorateCodeBlock(pre, streaming) {
  const code = pre.querySelector("code") || pre;
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9) || "";
  if (language ? hljs.getLanguage(language) : !streaming) hljs.highlightElement(code);
  const block = document.createElement("div");
  block.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = language || code.result?.language || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language || "code"} to the clipboard`);
  head.append(label, copy);
  pre.replaceWith(block);
  block.append(head, pre);
}

function appendCursor(container) {
  let node = container;
  // Descend to the element holding the last text, but not into a code block's highlight spans.
  while (node.tagName !== "CODE") {
    const last = lastMeaningfulChild(node);
    if (!last || last.nodeType !== Node.ELEMENT_NODE || ["BR", "HR", "IMG"].includes(last.tagName)) break;
    node = last;
  }
  const cursor = document.createElement("span");
  cursor.className = "cursor";
  cursor.setAttribute("aria-hidden", "true");
  const text = node.tagName === "CODE" ? lastTextNode(node) : null;
  if (text && text.data.endsWith("\n")) {
    text.splitText(text.data.length - 1).before(cursor); // marked ends code with a newline
  } else {
    node.append(cursor);
  }
}

function lastTextNode(node) {
  const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
  let last = null;
  while (walker.nextNode()) last = walker.currentNode;
  return last;
}

function lastMeaningfulChild(node) {
  let child = node.lastChild;
  while (child && child.nodeType === Node.TEXT_NODE && !child.textContent.trim()) {
    child = child.previousSibling;
  }
  return child;
}

// Copy text with the async Clipboard API, falling back to a hidden textarea when it is refused.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

// The code of the block a copy button belongs to.
export function codeOfCopyButton(button) {
  const code = button.closest(".code-block")?.querySelector("pre code, pre");
  return code ? code.textContent : "";
}
