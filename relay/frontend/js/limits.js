// What the page says when a limit refuses (429): which limit, and when to try again (from
// Retry-After), e.g. "Daily token quota reached. Try again in 5 hours."

const HEADLINES = {
  rate_limited: "Too many requests.",
  too_many_generations: "Too many answers generating at once.",
  too_many_streams: "Too many open streams.",
  queue_full: "The relay is busy: its queue is full.",
};

export function isRefusal(error) {
  return error?.status === 429;
}

// The sentence for a refusal `{code, message, retryAfter}`.
export function refusalText(error) {
  // A request larger than the whole quota has no Retry-After (waiting will not help): the
  // relay's sentence says what to change (a smaller max_tokens, a shorter prompt).
  if (error.code === "quota_exceeded" && error.retryAfter == null && error.message) {
    return error.message;
  }
  return `${headline(error)} ${whenToRetry(error.retryAfter)}`;
}

function headline({ code, message = "" }) {
  if (code === "quota_exceeded") {
    if (message.includes("this month")) return "Monthly token quota reached.";
    if (message.includes("this day")) return "Daily token quota reached.";
    return "Token quota reached.";
  }
  return HEADLINES[code] || "A limit was reached.";
}

// Rounded up: "try again in 4 hours" must not be too early.
export function whenToRetry(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "Try again later.";
  const units = [[86400 * 2, 86400, "day"], [3600, 3600, "hour"], [60, 60, "minute"], [0, 1, "second"]];
  const [, size, unit] = units.find(([from]) => seconds >= from);
  const count = Math.max(1, Math.ceil(seconds / size));
  return `Try again in ${count} ${unit}${count === 1 ? "" : "s"}.`;
}
