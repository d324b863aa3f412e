// The dispatcher's HTTP API as the console uses it. The key lives in sessionStorage only: it is sent
// in the Authorization header and never put in a URL (URLs end up in logs and browser history).

const KEY = "fleet.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An API error: the body's `{error: {code, message, fields}}` with the HTTP status. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.fields = error.fields || [];
  }
}

async function request(method, path, body, signal) {
  const headers = { Authorization: "Bearer " + (session.key() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { code: "unreachable", message: "The dispatcher did not answer: " + err.message });
  }
  return response;
}

async function failure(response) {
  const text = await response.text();
  let error = { message: text || response.statusText };
  try { error = JSON.parse(text).error || error; } catch { /* not JSON: keep the text */ }
  return new ApiError(response.status, error);
}

/** A JSON call (null for a 204 without a body); throws ApiError on any non-2xx answer. */
export async function call(method, path, body) {
  const response = await request(method, path, body);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/**
 * One image of a job as a URL an <img> can show: the presigned S3 URL its status carries (`known`)
 * or asks for, or (local store) a blob URL.
 */
export async function imageUrl(id, n, known) {
  if (known) return known;
  const { url } = await call("GET", `/v1/jobs/${id}/images/${n}/url`);
  if (url) return url;
  const response = await request("GET", `/v1/jobs/${id}/images/${n}`);
  if (!response.ok) throw await failure(response);
  return URL.createObjectURL(await response.blob());
}

/**
 * Follows a job's server-sent events until the stream ends or `signal` aborts, calling `onEvent`
 * with each event's JSON. EventSource cannot send an Authorization header, so the stream is read
 * with fetch and parsed here (only the `event:`/`data:` lines the dispatcher writes matter).
 */
export async function followEvents(id, onEvent, signal) {
  const response = await request("GET", `/v1/jobs/${id}/events`, undefined, signal);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      const kind = (block.split("\n").find((l) => l.startsWith("event:")) || "event:message").slice(6).trim();
      if (data && kind !== "error") onEvent(JSON.parse(data));
    }
  }
}
