// One job: live progress from its event stream, its images as soon as they exist, its request,
// when it expires, the equivalent `fleet submit` command, a cancel button, a delete button and its
// webhook deliveries. An admin also sees its tenant; a cancelled job says when it was cancelled
// and at which step.

import { call, followEvents, imageUrl } from "./api.js";
import { fleetCommand, recorded } from "./command.js";
import { $, param } from "./dom.js";
import { clearWebhooks, setupWebhooks, showWebhooks } from "./webhooks.js";

let following = null; // AbortController of the stream being read
let shownImages = "";
let asAdmin = false;

const when = (time) => new Date(time).toLocaleString();

/** Where a cancelled job stopped: the progress its record kept when it was cancelled. */
function cancelText(status) {
  const p = status.progress;
  const at = status.finished_at ? `cancelled ${when(status.finished_at)}` : "cancelled";
  if (!status.started_at) return `${at}, before it started`;
  return `${at}, at step ${p.step}/${p.steps} of image ${Math.min(p.images_done + 1, p.images_total)}/${p.images_total}`;
}

function stepText(status) {
  const p = status.progress;
  if (status.state === "cancelled") return cancelText(status);
  // the dispatcher's hint when no live worker serves the job's model
  if (status.state === "queued" && status.waiting_for) return `waiting: ${status.waiting_for}`;
  if (status.state === "running") return `step ${p.step}/${p.steps} · image ${Math.min(p.images_done + 1, p.images_total)}/${p.images_total}`;
  if (status.state === "succeeded") return `${p.images_done}/${p.images_total} images`;
  return "";
}

function fraction(status) {
  const p = status.progress;
  if (status.state === "succeeded") return 1;
  if (!p.steps || !p.images_total) return 0;
  return Math.min(1, (p.images_done * p.steps + p.step) / (p.images_total * p.steps));
}

/** An input image by reference: its `s3://` URI, or `inline` with the start of its SHA-256. */
function imageText(record) {
  return record.image_sha256 ? `${record.image} (sha256 ${record.image_sha256.slice(0, 12)}…)` : record.image;
}

function controlText(cn) {
  return `${cn.model} × ${cn.scale} (${cn.start}–${cn.end}), image ${imageText(cn)}`;
}

function renderParams(status) {
  const about = recorded(status);
  const list = $("job-params");
  list.replaceChildren();
  param(list, "Prompt", about.prompt || "(not recorded: submitted before requests were kept)");
  param(list, "Negative prompt", about.negative_prompt);
  param(list, "Model", status.model);
  param(list, "Steps", status.progress.steps);
  const first = (status.result || [])[0];
  param(list, "Size", first ? `${first.width}×${first.height}` : about.width && `${about.width}×${about.height}`);
  param(list, "Seeds", (status.result || []).map((r) => r.seed).join(", ") || about.seed);
  param(list, "Guidance", about.guidance);
  param(list, "LoRAs", (about.loras || []).map((l) => `${l.name ?? l.url} × ${l.scale}`).join(", "));
  if (about.controlnet) param(list, "ControlNet", controlText(about.controlnet));
  if (about.init) {
    param(list, "Start image", `${imageText(about.init.image)}, strength ${about.init.strength}`);
    if (about.init.mask) param(list, "Inpainting mask", imageText(about.init.mask));
  }
  param(list, "Format", about.format);
  param(list, "Priority", status.priority);
  if (asAdmin) param(list, "Tenant", status.tenant);
  param(list, "Worker", status.worker);
  param(list, "Attempts", status.attempts);
  param(list, "Created", when(status.created_at));
  if (status.finished_at) param(list, status.state === "cancelled" ? "Cancelled" : "Finished", when(status.finished_at));
  if (status.expires_at) param(list, "Expires", `${when(status.expires_at)} (images and record are removed then)`);
  else if (status.retention_secs) param(list, "Kept", `${status.retention_secs} s after it finishes`);
  param(list, "Job id", status.id);
  $("job-command").value = fleetCommand(status) || "(no prompt recorded for this job)";
}

async function renderImages(status) {
  const results = status.result || [];
  const key = status.id + ":" + results.map((r) => r.index).join(",");
  if (key === shownImages) return;
  shownImages = key;
  const items = await Promise.all(results.map(async (r) => {
    const url = await imageUrl(status.id, r.index, r.url);
    const item = document.createElement("li");
    item.innerHTML = `<figure><img><figcaption><span></span> <a target="_blank" rel="noopener"></a></figcaption></figure>`;
    const img = item.querySelector("img");
    img.src = url;
    img.alt = `Image ${r.index + 1}: ${recorded(status).prompt || "generated image"} (seed ${r.seed})`;
    img.width = r.width;
    img.height = r.height;
    item.querySelector("span").textContent = `seed ${r.seed} · ${r.width}×${r.height} · ${r.format}`;
    const open = item.querySelector("a");
    open.href = url;
    open.textContent = `Open image ${r.index + 1}`;
    return item;
  }));
  $("job-images").replaceChildren(...items);
}

function render(status, onError) {
  $("job-title").textContent = `Job ${status.id.slice(0, 8)}…`;
  const state = $("job-state");
  state.textContent = status.state;
  state.className = `state state-${status.state}`;
  $("job-step").textContent = stepText(status);
  $("job-progress").value = fraction(status);
  $("job-error").textContent = status.error && status.state !== "cancelled" ? `${status.error.code}: ${status.error.message}` : "";
  $("job-cancel").hidden = status.state !== "queued" && status.state !== "running";
  $("job-cancel").dataset.id = status.id;
  $("job-delete").hidden = false;
  $("job-delete").dataset.id = status.id;
  renderParams(status);
  renderImages(status).catch(onError);
  showWebhooks(status).catch(onError);
}

/** Empties the page, so that nothing of the job shown before (maybe another tenant's) stays. */
function clear() {
  shownImages = "";
  $("job-title").textContent = "Job";
  for (const id of ["job-state", "job-step", "job-error", "job-copied", "job-deleted"]) $(id).textContent = "";
  $("job-progress").value = 0;
  $("job-cancel").hidden = true;
  $("job-delete").hidden = true;
  $("job-images").replaceChildren();
  $("job-params").replaceChildren();
  $("job-command").value = "";
  clearWebhooks();
}

function terminal(status) {
  return ["succeeded", "failed", "cancelled"].includes(status.state);
}

/** Stops following the job shown (when the page is left). */
export function leaveJob() {
  if (following) following.abort();
  following = null;
}

/**
 * Shows job `id` and follows it until it is final; the stream is re-opened if it drops early.
 * `shown` is called once the job is found, to reveal the page: a job that cannot be read shows
 * only the error. `admin`: the caller's key is an admin's (the page then names the tenant).
 */
export async function showJob(id, onError, { admin = false, shown = () => {} } = {}) {
  leaveJob();
  clear();
  asAdmin = admin;
  const controller = new AbortController();
  following = controller;
  let status = await call("GET", `/v1/jobs/${id}`);
  if (controller.signal.aborted) return; // another page was opened meanwhile
  shown();
  render(status, onError);
  while (!terminal(status) && !controller.signal.aborted) {
    try {
      await followEvents(id, (event) => {
        status = event.status;
        render(status, onError);
      }, controller.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      onError(err);
    }
    if (controller.signal.aborted || terminal(status)) return;
    // the stream ended early (a proxy's timeout, a dispatcher restart): catch up, then listen again
    await new Promise((r) => setTimeout(r, 1000));
    status = await call("GET", `/v1/jobs/${id}`);
    if (controller.signal.aborted) return;
    render(status, onError);
  }
}

export function setupJob(onError) {
  setupWebhooks(onError);
  $("job-copy").addEventListener("click", async () => {
    const text = $("job-command").value;
    try {
      await navigator.clipboard.writeText(text);
      $("job-copied").textContent = "Copied.";
    } catch {
      // no clipboard permission (plain http): select it so Ctrl+C works
      $("job-command").select();
      $("job-copied").textContent = "Selected: press Ctrl+C to copy.";
    }
  });
  $("job-cancel").addEventListener("click", async () => {
    try {
      render(await call("POST", `/v1/jobs/${$("job-cancel").dataset.id}/cancel`), onError);
    } catch (err) {
      onError(err);
    }
  });
  $("job-delete").addEventListener("click", async () => {
    const id = $("job-delete").dataset.id;
    if (!window.confirm("Delete this job? Its images and record are removed for good.")) return;
    try {
      const status = await call("DELETE", `/v1/jobs/${id}`);
      if (status === null) {
        leaveJob();
        clear();
        $("job-deleted").textContent = `Job ${id} was deleted.`;
        return;
      }
      // not finished yet: cancelled now, removed once final
      render(status, onError);
      $("job-deleted").textContent = "Cancelled; its images and record are removed once it is final.";
    } catch (err) {
      onError(err);
    }
  });
}
