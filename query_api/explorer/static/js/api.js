// The HeatmapService over Connect's unary JSON protocol: POST
// /heatmap.v1.HeatmapService/<Method> with the request's proto3 JSON; the same
// handlers answer gRPC clients, so the page has no query logic of its own.
// QueryHeatmapData goes as application/proto (same endpoint, Connect's binary codec).

import { decodeQueryReply, encodeQuery } from "./proto.js";

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

async function post(method, body, contentType, token, signal) {
  let response;
  try {
    response = await fetch(`/${SERVICE}/${method}`, {
      method: "POST",
      headers: {
        "Content-Type": contentType,
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
      },
      body,
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new RpcError("unavailable", "The query service cannot be reached.", 0);
  }
  if (response.ok) return response;
  // Connect sends a unary error as JSON {code, message} whatever the request's codec.
  const text = await response.text();
  let error = null;
  try {
    error = JSON.parse(text);
  } catch {
    error = null;
  }
  const code = error?.code ?? HTTP_CODES[response.status] ?? "unknown";
  throw new RpcError(code, error?.message ?? `HTTP ${response.status}`, response.status);
}

// A unary call in proto3 JSON.
export async function call(method, request, token, signal) {
  const response = await post(method, JSON.stringify(request), "application/json", token, signal);
  try {
    return await response.json();
  } catch {
    throw new RpcError("internal", "The reply was not JSON.", response.status);
  }
}

// QueryHeatmapData in binary (js/proto.js says why); the reply shaped like its JSON.
export async function queryHeatmap(request, token, signal) {
  const response = await post("QueryHeatmapData", encodeQuery(request), "application/proto", token, signal);
  return decodeQueryReply(new Uint8Array(await response.arrayBuffer()));
}

export function base64ToBytes(text) {
  const raw = atob(text ?? "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}
