// The bulk-run pages (admin): every run with its progress, and one run in detail. Read-only: runs
// are steered with `fleet bulk resume | retry-failed | cancel`. Refreshed every few seconds.

import { call } from "./api.js";
import { $, param } from "./dom.js";

const EVERY_MS = 5000;
let timer = null;

const pending = (p) => p.total - p.succeeded - p.failed;
const percent = (n, total) => (total ? ` (${((100 * n) / total).toFixed(1)} %)` : "");

function ago(time) {
  if (!time) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - new Date(time)) / 1000));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function cell(tr, text, header) {
  const td = document.createElement(header ? "th" : "td");
  if (header) td.scope = "row";
  if (text instanceof Node) td.append(text);
  else td.textContent = text;
  tr.append(td);
}

function stateBadge(state) {
  const span = document.createElement("span");
  span.className = `state state-${state === "finished" ? "succeeded" : state}`;
  span.textContent = state;
  return span;
}

function runRow(run) {
  const p = run.progress;
  const tr = document.createElement("tr");
  if (p.failed) tr.className = "warn";
  const link = document.createElement("a");
  link.href = `#/bulk/${encodeURIComponent(run.name)}`;
  link.textContent = run.name;
  cell(tr, link, true);
  cell(tr, stateBadge(p.state));
  cell(tr, `${p.succeeded} / ${p.total}`);
  cell(tr, String(p.failed));
  cell(tr, String(pending(p)));
  cell(tr, `${p.shards_done} / ${p.shards_total}`);
  cell(tr, p.stalled_since ? "stalled" : p.state === "running" ? p.images_per_second.toFixed(2) : "–");
  cell(tr, run.config.out);
  cell(tr, ago(p.updated_at));
  return tr;
}

async function refreshList() {
  const { runs } = await call("GET", "/v1/bulk/runs");
  $("bulk-runs").replaceChildren(...runs.map(runRow));
  $("bulk-empty").hidden = runs.length > 0;
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return null;
  const s = Math.round(seconds);
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function renderRun(run) {
  const p = run.progress;
  $("bulk-run-title").textContent = `Bulk run ${run.name}`;
  const state = $("bulk-run-state");
  state.textContent = p.state;
  state.className = stateBadge(p.state).className;
  $("bulk-run-summary").textContent = `${p.succeeded + p.failed} of ${p.total} samples final · ${p.shards_done} of ${p.shards_total} shards written`;
  $("bulk-run-progress").value = p.total ? (p.succeeded + p.failed) / p.total : 0;
  $("bulk-run-stale").textContent = p.stalled_since
    ? `Stalled: no driver since ${new Date(p.stalled_since).toLocaleString()} (its fleet bulk process stopped: resume it).`
    : `Last progress update ${ago(p.updated_at)}.`;

  const counts = $("bulk-run-counts");
  counts.replaceChildren();
  param(counts, "Succeeded", `${p.succeeded}${percent(p.succeeded, p.total)}`);
  param(counts, "Failed", `${p.failed}${percent(p.failed, p.total)}`);
  const codes = Object.entries(p.failed_by_code || {});
  if (codes.length) param(counts, "Failures by code", codes.map(([code, n]) => `${code} ${n}`).join(", "));
  param(counts, "Pending", `${pending(p)} (queued ${p.queued}, running ${p.running}, not yet submitted ${p.waiting})`);
  param(counts, "Shards", `${p.shards_done} / ${p.shards_total}`);
  if (p.state === "running" && !p.stalled_since) {
    param(counts, "Rate", `${p.images_per_second.toFixed(2)} images/s`);
    param(counts, "Time left", duration(p.eta_seconds));
  }
  param(counts, "Unfinished jobs", run.unfinished_jobs);

  const c = run.config;
  const list = $("bulk-run-params");
  list.replaceChildren();
  param(list, "Output", c.out);
  param(list, "Layout", c.layout === "files" ? "image folders" : "WebDataset shards");
  param(list, "Where", c.local ? "in-process (--local)" : "through the fleet");
  param(list, "Input", `${c.input} (${c.input_format}, ${run.input.rows} rows, ${run.input.invalid_rows} invalid)`);
  param(list, "Input SHA-256", run.input.sha256);
  param(list, "Samples", `${run.input.samples} (${c.seeds_per_prompt} per prompt, ${c.shard_size} per shard)`);
  param(list, "Run seed", c.seed);
  param(list, "Job defaults", Object.keys(c.defaults).length ? JSON.stringify(c.defaults) : "none");
  param(list, "Most in flight", c.max_in_flight);
  param(list, "Started", new Date(run.started_at).toLocaleString());
  if (run.finished_at) param(list, "Ended", new Date(run.finished_at).toLocaleString());
  if (run.state !== "running") param(list, "Totals", `${run.totals.succeeded} succeeded, ${run.totals.failed} failed, ${run.totals.shards} shards`);
  param(list, "fleet version", run.fleet_version);
}

function clearRun() {
  $("bulk-run-title").textContent = "Bulk run";
  for (const id of ["bulk-run-state", "bulk-run-summary", "bulk-run-stale"]) $(id).textContent = "";
  $("bulk-run-progress").value = 0;
  $("bulk-run-counts").replaceChildren();
  $("bulk-run-params").replaceChildren();
}

function every(refresh, onError) {
  timer = setInterval(() => refresh().catch((err) => { leaveBulk(); onError(err); }), EVERY_MS);
}

/** The list of runs, refreshed until `leaveBulk`. */
export async function showBulkRuns(onError) {
  leaveBulk();
  await refreshList();
  every(refreshList, onError);
}

/** One run, refreshed until `leaveBulk`. */
export async function showBulkRun(name, onError) {
  leaveBulk();
  clearRun();
  const refresh = async () => renderRun(await call("GET", `/v1/bulk/runs/${encodeURIComponent(name)}`));
  await refresh();
  every(refresh, onError);
}

export function leaveBulk() {
  clearInterval(timer);
  timer = null;
}
