// The relay's JSON endpoints. Every failure becomes an ApiError carrying the contract's
// `{"error": {"code", "message"}}`, so the page can always show a human sentence.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
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
    throw new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || `The relay answered HTTP ${response.status}.`,
    );
  }
  return data;
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
