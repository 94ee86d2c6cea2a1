// The relay's JSON endpoints. Every failure becomes an ApiError carrying the contract's
// `{"error": {"code", "message"}}`, so the page can always show a human sentence.

export class ApiError extends Error {
  constructor(status, code, message, body = null, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body; // the whole JSON answer (GET /auth/me's 401 says whether setup is needed)
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After
  }
}

// Called when an API call is refused for want of a session (it ended elsewhere); the sign-in
// endpoints answer 401 as part of their job and never call it.
let sessionLost = null;
export function onSessionLost(handler) {
  sessionLost = handler;
}
const SIGN_IN = { signIn: true };

async function request(method, path, body, { signIn = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the relay. Check the connection and try again.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || `The relay answered HTTP ${response.status}.`,
      data,
      retryAfterSeconds(response.headers.get("Retry-After")),
    );
    if (response.status === 401 && !signIn && sessionLost) sessionLost(failure);
    throw failure;
  }
  return data;
}

export function retryAfterSeconds(value) {
  if (!value) return null;
  const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, Math.ceil(seconds)) : null;
}

const path = (prefix, id) => `${prefix}/${encodeURIComponent(id)}`;

export const listModels = async () => (await request("GET", "/v1/models")).data.map((m) => m.id);
export const listConversations = async () => (await request("GET", "/conversations")).conversations;
export const getConversation = (id) => request("GET", path("/conversations", id));
export const renameConversation = (id, title) => request("PATCH", path("/conversations", id), { title });
export const deleteConversation = (id) => request("DELETE", path("/conversations", id));
export const createTicket = (fields) => request("POST", "/new", fields);
export const getTicket = (id) => request("GET", path("/tickets", id));
export const cancelTicket = (id) => request("POST", `${path("/sse", id)}/cancel`);
export const getUsage = () => request("GET", "/usage");

// Why a ticket's EventSource failed before it opened: GET it once more as a fetch, which can
// read a 429 (a limit refused the claim). Returns that ApiError, or null for anything else (a
// stream that starts now is dropped at once: the EventSource reopened next resumes it).
export async function probeStream(url) {
  const controller = new AbortController();
  let response;
  try {
    response = await fetch(url, {
      credentials: "same-origin", headers: { Accept: "text/event-stream" }, signal: controller.signal,
    });
  } catch {
    return null;
  }
  if (response.status !== 429) {
    controller.abort();
    return null;
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  const error = (data && data.error) || {};
  return new ApiError(429, error.code || "http_429", error.message || "A limit of the relay was reached.",
    data, retryAfterSeconds(response.headers.get("Retry-After")));
}

export const getMe = () => request("GET", "/auth/me", undefined, SIGN_IN);
export const signIn = (username, password) => request("POST", "/auth/login", { username, password }, SIGN_IN);
export const setUp = (username, password) => request("POST", "/auth/setup", { username, password }, SIGN_IN);
export const signOut = () => request("POST", "/auth/logout", undefined, SIGN_IN);
export const listKeys = async () => (await request("GET", "/auth/keys")).keys;
export const createKey = (fields) => request("POST", "/auth/keys", fields);
export const revokeKey = (id) => request("DELETE", path("/auth/keys", id));
export const listUsers = async () => (await request("GET", "/admin/users")).users;
export const createUser = (fields) => request("POST", "/admin/users", fields);
export const updateUser = (name, fields) => request("PATCH", path("/admin/users", name), fields);
