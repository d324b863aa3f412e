// The console shell: signing in and out, the pages behind `#/…` routes, and error display.

import { session } from "./api.js";
import { setupSubmit, loadLibrary, forgetLibrary } from "./submit.js";
import { setupJobs, showJobs } from "./jobs.js";
import { setupJob, showJob, leaveJob } from "./job.js";
import { showFleet, leaveFleet } from "./fleet.js";
import { showBulkRuns, showBulkRun, leaveBulk } from "./bulk.js";
import { $ } from "./dom.js";

let admin = false;

function say(message) {
  $("alert").textContent = message;
  $("alert").hidden = !message;
}

/** Any failure: a refused key signs out (with the reason); anything else is shown above the page. */
function onError(err) {
  if (err.status === 401) {
    signOut();
    say(`Your API key was refused (${err.message}). Check it and sign in again.`);
    return;
  }
  say(err.code ? `${err.code}: ${err.message}` : String(err.message || err));
}

function signOut() {
  session.clear();
  forgetLibrary();
  admin = false;
  route();
}

function showPage(name) {
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== "page-" + name;
  for (const link of document.querySelectorAll("#nav a")) {
    // a run's page belongs to the "Bulk runs" link, as a job's to none
    if (link.dataset.page === name || name === link.dataset.page + "-run") link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Move focus to the new page's heading so keyboard and screen-reader users land on it.
  const heading = document.querySelector(`#page-${name} h1`);
  if (heading) heading.focus();
}

async function route() {
  leaveJob();
  leaveFleet();
  leaveBulk();
  const signedIn = Boolean(session.key());
  $("nav").hidden = $("who").hidden = !signedIn;
  $("nav-fleet").hidden = $("nav-bulk").hidden = !admin;
  if (!signedIn) {
    showPage("login");
    return;
  }
  say("");
  const [, page, arg] = (location.hash || "#/submit").split("/");
  try {
    if (page === "jobs") {
      showPage("jobs");
      await showJobs();
    } else if (page === "job" && arg) {
      // no page until the job is found: a job that is not there shows only the error
      showPage("none");
      await showJob(arg, onError, { admin, shown: () => showPage("job") });
    } else if (page === "fleet" && admin) {
      showPage("fleet");
      await showFleet(onError);
    } else if (page === "bulk" && admin && arg) {
      showPage("bulk-run");
      await showBulkRun(decodeURIComponent(arg), onError);
    } else if (page === "bulk" && admin) {
      showPage("bulk");
      await showBulkRuns(onError);
    } else {
      showPage("submit");
      await loadLibrary();
    }
  } catch (err) {
    onError(err);
  }
}

/** Checks the key against the API before keeping it, and learns its tenant and whether it is an admin key. */
async function signIn(key) {
  session.set(key);
  forgetLibrary();
  try {
    const library = await loadLibrary();
    $("tenant").textContent = `tenant ${library.tenant}`;
    admin = library.admin;
  } catch (err) {
    session.clear();
    throw err;
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  say("");
  try {
    await signIn($("api-key").value.trim());
    $("api-key").value = "";
    route();
  } catch (err) {
    say(err.status === 401 ? `Sign-in failed: that API key is not accepted (${err.message}).` : `Sign-in failed: ${err.message}`);
    $("api-key").focus();
  }
});
$("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
setupSubmit((status) => { location.hash = `#/job/${status.id}`; }, onError);
setupJobs(onError);
setupJob(onError);

// A reload keeps the session's key: check it again (it may have been revoked) and show the page.
if (session.key()) signIn(session.key()).then(route, (err) => { route(); onError(err); });
else route();
