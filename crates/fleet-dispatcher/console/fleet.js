// The admin page: queues (with the dead-letter queue), per-model counters, workers and the first
// dead-lettered messages, refreshed every few seconds. Rates are differences between two
// refreshes: the API serves counts only.

import { call } from "./api.js";
import { $ } from "./dom.js";

const EVERY_MS = 5000;
let timer = null;
let previous = null; // {at, queues: {name: ready}, done: {model: finished}}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  cells.forEach((cell, i) => {
    const td = document.createElement(i === 0 ? "th" : "td");
    if (i === 0) td.scope = "row";
    td.textContent = cell;
    tr.append(td);
  });
  return tr;
}

function rate(now, before, seconds) {
  return before === undefined || !seconds ? "–" : ((now - before) / seconds).toFixed(2);
}

// Job queues are named `<prefix>.<model>.<priority>`; the one that is neither is the dead-letter queue.
const isDeadLetter = (name) => !/\.(interactive|bulk)$/.test(name);

function ago(time) {
  const seconds = Math.max(0, Math.round((Date.now() - new Date(time)) / 1000));
  return `${seconds} s ago`;
}

const DEAD_SHOWN = 20;

function deadRow(m) {
  const why = m.reason ? (m.detail ? `${m.reason}: ${m.detail}` : m.reason) : "–";
  const tr = row(["", m.tenant || "–", m.model || "–", why, m.queue || "–", m.count ?? "–",
    m.time ? new Date(m.time).toLocaleString() : "–"]);
  const first = tr.firstChild;
  if (m.job_id) {
    const link = document.createElement("a");
    link.href = `#/job/${m.job_id}`;
    link.textContent = m.job_id;
    first.append(link);
  } else {
    first.textContent = `not a job: ${m.body_preview || ""}`;
  }
  return tr;
}

function showDeadLetters(dead) {
  $("dead-letters").replaceChildren(...dead.messages.map(deadRow));
  $("dead-summary").textContent = dead.depth
    ? `${dead.depth} message(s) in ${dead.queue}; ${dead.messages.length < dead.depth ? `the first ${dead.messages.length}` : "all"} shown. Looking leaves them in the queue.`
    : `${dead.queue} is empty.`;
}

async function refresh() {
  const [{ queues, counters }, { workers }, dead] = await Promise.all([
    call("GET", "/v1/queues"), call("GET", "/v1/workers"), call("GET", `/v1/dead-letters?limit=${DEAD_SHOWN}`)]);
  const at = Date.now();
  const seconds = previous && (at - previous.at) / 1000;
  const done = {};
  $("queues").replaceChildren(...queues.map((q) => {
    const dead = isDeadLetter(q.name);
    const name = dead ? `${q.name} (dead letters)` : q.name;
    return row([name, q.messages, q.consumers, rate(q.messages, previous && previous.queues[q.name], seconds)], dead && q.messages ? "warn" : "");
  }));
  $("counters").replaceChildren(...Object.entries(counters).map(([model, c]) => {
    done[model] = c.succeeded + c.failed + c.cancelled;
    return row([model, c.accepted, c.succeeded, c.failed, c.cancelled, rate(done[model], previous && previous.done[model], seconds)]);
  }));
  $("workers").replaceChildren(...workers.map((w) => {
    const up = (new Date(w.last_seen) - new Date(w.started_at)) / 1000;
    const batch = w.current_batch ? `${w.current_batch.job_ids.length} job(s), ${w.current_batch.images} image(s)` : "idle";
    return row([w.id, w.models.join(", "), w.device, batch, up > 0 ? (w.images_done / up).toFixed(2) : "–",
      `${w.jobs_done} / ${w.jobs_failed}`, ago(w.last_seen)]);
  }));
  if (!workers.length) $("workers").append(row(["no live workers", "", "", "", "", "", ""]));
  showDeadLetters(dead);
  previous = { at, done, queues: Object.fromEntries(queues.map((q) => [q.name, q.messages])) };
}

/** Shows the page and refreshes it until `leaveFleet`. */
export async function showFleet(onError) {
  leaveFleet();
  await refresh();
  timer = setInterval(() => refresh().catch((err) => { leaveFleet(); onError(err); }), EVERY_MS);
}

export function leaveFleet() {
  clearInterval(timer);
  timer = null;
}
