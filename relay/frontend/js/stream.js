// One ticket's event stream on the browser's own EventSource.
//
// EventSource reconnects by itself after a dropped connection and sends Last-Event-ID, so the
// relay resumes exactly after the last event we saw. Ids we have already applied are ignored
// anyway, so a replay can never duplicate text. When the browser gives up (an HTTP error ends
// the EventSource), we ask /tickets/<id> what happened and reopen with ?last_event_id=n. A stream
// of an unfinished ticket that the relay refused may have been refused by a limit (a 429 that
// EventSource cannot read: too many streams open, or a quota at the start): probeStream() reads
// it, and onRefused(error, lastEventId) shows it rather than retrying in vain.

import { getTicket, probeStream } from "./api.js";

const FINISHED = new Set(["completed", "failed", "cancelled"]);
const MAX_RECOVERIES = 6;

export class TicketStream {
  // handlers: onDelta(text), onConnected(), onReconnecting(), onDone({status, error, ...}),
  // onRefused(error, lastEventId), onQueued(position) (waiting for an upstream slot; 1 = next)
  constructor(ticket, handlers) {
    this.id = ticket.id;
    this.url = ticket.stream_url;
    this.handlers = handlers;
    this.lastEventId = 0;
    this.source = null;
    this.closed = false;
    this.recoveries = 0;
    this.timer = null;
    this.opened = false;
  }

  start(afterId = 0) {
    this.lastEventId = afterId;
    this.#open();
  }

  // Stop listening (switching conversations); the relay keeps generating.
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }

  #url() {
    const url = new URL(this.url, window.location.href);
    if (this.lastEventId > 0) url.searchParams.set("last_event_id", String(this.lastEventId));
    return url;
  }

  #open() {
    const source = new EventSource(this.#url());
    this.source = source;
    source.onopen = () => {
      this.opened = true;
      this.recoveries = 0;
      this.handlers.onConnected();
    };
    source.onmessage = (event) => {
      if (!this.#isNew(event)) return;
      const data = parseJSON(event.data);
      if (data && typeof data.delta === "string") this.handlers.onDelta(data.delta);
    };
    // Sent without an id while the ticket waits in the relay's queue, before any token.
    source.addEventListener("queued", (event) => {
      const data = parseJSON(event.data);
      if (data && Number.isInteger(data.position)) this.handlers.onQueued(data.position);
    });
    source.addEventListener("done", (event) => {
      this.#isNew(event);
      this.#finish(parseJSON(event.data) || { status: "failed", error: unreadable() });
    });
    source.onerror = () => {
      if (this.closed || source !== this.source) return;
      this.handlers.onReconnecting();
      if (source.readyState === EventSource.CLOSED) this.#recover();
    };
  }

  #isNew(event) {
    const id = Number.parseInt(event.lastEventId, 10);
    if (!Number.isFinite(id)) return true;
    if (id <= this.lastEventId) return false;
    this.lastEventId = id;
    return true;
  }

  #finish(result) {
    if (this.closed) return;
    this.close();
    this.handlers.onDone(result);
  }

  #recover() {
    this.source.close();
    if (this.recoveries >= MAX_RECOVERIES) {
      this.#finish({
        status: "failed",
        error: { code: "connection_lost", message: "Lost the connection to the relay. Reload the page to try again." },
      });
      return;
    }
    const delay = Math.min(1000 * 2 ** this.recoveries, 10000);
    this.recoveries += 1;
    this.timer = setTimeout(() => this.#checkAndReopen(), delay);
  }

  async #checkAndReopen() {
    if (this.closed) return;
    let ticket;
    try {
      ticket = await getTicket(this.id);
    } catch (error) {
      if (this.closed) return;
      if (error.status === 404) {
        this.#finish({ status: "failed", error: { code: error.code, message: "This answer is no longer available." } });
      } else {
        this.#recover();
      }
      return;
    }
    if (this.closed) return;
    if (FINISHED.has(ticket.status) && ticket.last_event_id <= this.lastEventId) {
      this.#finish(ticket);
      return;
    }
    if (!FINISHED.has(ticket.status)) {
      const refusal = await probeStream(this.#url());
      if (this.closed) return;
      if (refusal) {
        this.close();
        this.handlers.onRefused(refusal, this.lastEventId);
        return;
      }
    }
    this.#open();
  }
}

function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function unreadable() {
  return { code: "bad_event", message: "The relay sent an event the page could not read." };
}
