// The HeatmapService over Connect's unary JSON protocol: POST
// /heatmap.v1.HeatmapService/<Method> with the request's proto3 JSON; the same
// handlers answer gRPC clients, so the page has no query logic of its own.

const SERVICE = "heatmap.v1.HeatmapService";

const HTTP_CODES = {
  400: "invalid_argument",
  401: "unauthenticated",
  403: "permission_denied",
  404: "not_found",
  408: "deadline_exceeded",
  429: "resource_exhausted",
  501: "unimplemented",
  502: "unavailable",
  503: "unavailable",
  504: "unavailable",
};

export class RpcError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }

  get isAuth() {
    return this.code === "unauthenticated";
  }

  get isDown() {
    return this.code === "unavailable" || this.code === "deadline_exceeded";
  }
}

export async function call(method, request, token, signal) {
  let response;
  try {
    response = await fetch(`/${SERVICE}/${method}`, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify(request),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new RpcError("unavailable", "The query service cannot be reached.", 0);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    body = null;
  }
  if (!response.ok) {
    const code = body?.code ?? HTTP_CODES[response.status] ?? "unknown";
    const message = body?.message ?? `HTTP ${response.status}`;
    throw new RpcError(code, message, response.status);
  }
  if (body === null) throw new RpcError("internal", "The reply was not JSON.", response.status);
  return body;
}

export function base64ToBytes(text) {
  const raw = atob(text ?? "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}
