// The gallery: the tenant's jobs, newest first, a page at a time, filtered by status.

import { call, imageUrl } from "./api.js";
import { recorded } from "./command.js";
import { $ } from "./dom.js";

const PAGE = 12;
// cursors[i] fetches page i; page 0 has none. Going back pops, so "Newer" needs no API support.
let cursors = [null];
let nextCursor = null;

export function jobCard(status) {
  const item = document.createElement("li");
  item.className = "job";
  const link = document.createElement("a");
  link.href = `#/job/${status.id}`;
  const prompt = recorded(status).prompt || "(prompt not recorded: submitted before requests were kept)";
  const figure = document.createElement("div");
  figure.className = "thumb";
  if (status.state === "succeeded" && status.result && status.result.length) {
    const img = document.createElement("img");
    img.alt = prompt;
    img.loading = "lazy";
    figure.append(img);
    imageUrl(status.id, status.result[0].index).then((url) => { img.src = url; }, () => { img.alt = "image unavailable"; });
  }
  const text = document.createElement("span");
  text.className = "prompt";
  text.textContent = prompt;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.innerHTML = `<span class="state state-${status.state}"></span> <span class="model"></span> · <time></time>`;
  meta.querySelector(".state").textContent = status.state;
  meta.querySelector(".model").textContent = status.model;
  meta.querySelector("time").dateTime = status.created_at;
  meta.querySelector("time").textContent = new Date(status.created_at).toLocaleString();
  link.append(figure, text, meta);
  item.append(link);
  return item;
}

async function showPage() {
  const params = new URLSearchParams({ limit: PAGE });
  if ($("jobs-state").value) params.set("state", $("jobs-state").value);
  const cursor = cursors[cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  const page = await call("GET", "/v1/jobs?" + params);
  nextCursor = page.next_cursor;
  $("jobs-list").replaceChildren(...page.jobs.map(jobCard));
  $("jobs-empty").hidden = page.jobs.length > 0;
  $("jobs-prev").disabled = cursors.length === 1;
  $("jobs-next").disabled = !nextCursor;
  $("jobs-page").textContent = `Page ${cursors.length}`;
}

/** Shows the first page (of the current filter). */
export function showJobs() {
  cursors = [null];
  return showPage();
}

export function setupJobs(onError) {
  const run = (f) => () => f().catch(onError);
  $("jobs-state").addEventListener("change", run(showJobs));
  $("jobs-refresh").addEventListener("click", run(showPage));
  $("jobs-next").addEventListener("click", run(() => {
    cursors.push(nextCursor);
    return showPage();
  }));
  $("jobs-prev").addEventListener("click", run(() => {
    cursors.pop();
    return showPage();
  }));
}
