// A job's webhook deliveries (GET /v1/jobs/{id}/webhooks): one row per attempt, with its answer
// or error and, for a failed one, when it is tried again. Shown only for a job with a webhook;
// read again whenever the job's state changes and on "Refresh".

import { call } from "./api.js";
import { $ } from "./dom.js";

let shownFor = ""; // "<job id>:<state>" last read

const when = (time) => (time ? new Date(time).toLocaleString() : "–");

function row(attempt) {
  const tr = document.createElement("tr");
  const answer = attempt.status_code ? `HTTP ${attempt.status_code}` : "no answer";
  const cells = [
    when(attempt.at),
    attempt.event,
    String(attempt.attempt),
    answer,
    attempt.outcome.replace("_", " "),
    attempt.outcome === "retrying" ? when(attempt.next_try) : "–",
    `${attempt.duration_ms} ms`,
    attempt.error || "",
  ];
  cells.forEach((cell, i) => {
    const td = document.createElement(i === 0 ? "th" : "td");
    if (i === 0) td.scope = "row";
    td.textContent = cell;
    tr.append(td);
  });
  tr.title = attempt.webhook_id;
  if (attempt.outcome === "gave_up") tr.className = "warn";
  return tr;
}

/** Reads and shows the job's delivery log (again when `force` or the job's state changed). */
export async function showWebhooks(status, force = false) {
  const webhook = status.request && status.request.webhook;
  $("job-webhooks").hidden = !webhook;
  if (!webhook) return;
  const key = `${status.id}:${status.state}`;
  if (key === shownFor && !force) return;
  shownFor = key;
  $("job-webhooks-refresh").dataset.id = status.id;
  $("job-webhook-url").textContent = `${webhook.url} (${webhook.events.join(", ")})`;
  const log = await call("GET", `/v1/jobs/${status.id}/webhooks`);
  $("job-webhook-attempts").replaceChildren(...log.attempts.map(row));
  $("job-webhooks-empty").hidden = log.attempts.length > 0;
}

/** Forgets the job shown. */
export function clearWebhooks() {
  shownFor = "";
  $("job-webhooks").hidden = true;
  $("job-webhook-attempts").replaceChildren();
}

export function setupWebhooks(onError) {
  $("job-webhooks-refresh").addEventListener("click", async () => {
    try {
      const status = await call("GET", `/v1/jobs/${$("job-webhooks-refresh").dataset.id}`);
      await showWebhooks(status, true);
    } catch (err) {
      onError(err);
    }
  });
}
