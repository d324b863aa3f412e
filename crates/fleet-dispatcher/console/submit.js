// The prompt form: the library's choices, the job spec it builds, and the API's field errors.

import { call, ApiError } from "./api.js";
import { $ } from "./dom.js";

let loraCount = 0;
let library = null;

function options(select, values) {
  select.replaceChildren(...values.map((v) => new Option(v, v)));
}

/** Fills the model list and the LoRA/ControlNet suggestions from `GET /v1/library` (once a
 * session) and returns it: it also names the caller's tenant and whether the key is an admin's. */
export async function loadLibrary() {
  if (library) return library;
  library = await call("GET", "/v1/library");
  options($("model"), library.models.map((m) => m.name));
  $("lora-names").replaceChildren(...library.loras.map((n) => new Option(n)));
  $("controlnet-names").replaceChildren(...library.controlnets.map((n) => new Option(n)));
  showModelLimits();
  return library;
}

export function forgetLibrary() {
  library = null;
}

function showModelLimits() {
  const model = library && library.models.find((m) => m.name === $("model").value);
  if (!model) return;
  for (const side of ["width", "height"]) {
    $(side).max = model.max_side;
    if (Number($(side).value) > model.max_side) $(side).value = model.max_side;
  }
}

function addLora() {
  const k = ++loraCount;
  const row = document.createElement("li");
  row.innerHTML = `
    <div class="grow"><label for="lora-name-${k}">LoRA name</label>
      <input id="lora-name-${k}" class="lora-name" list="lora-names" required></div>
    <div class="scale"><label for="lora-scale-${k}">Scale</label>
      <input id="lora-scale-${k}" class="lora-scale" type="number" min="-4" max="4" step="0.05" value="1"></div>
    <button type="button" class="remove">Remove</button>`;
  row.querySelector(".remove").addEventListener("click", () => {
    row.remove();
    $("add-lora").focus();
  });
  $("loras").append(row);
  row.querySelector(".lora-name").focus();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

const number = (id) => Number($(id).value);

/** The job spec the form describes (the API validates it; the form only shapes it). */
async function spec() {
  const job = {
    prompt: $("prompt").value,
    model: $("model").value,
    steps: number("steps"),
    width: number("width"),
    height: number("height"),
    num_images: number("num_images"),
    priority: $("priority").value,
    output: { format: $("format").value },
  };
  if ($("seed").value !== "") job.seed = number("seed");
  if ($("negative_prompt").value) job.negative_prompt = $("negative_prompt").value;
  if (number("guidance")) job.guidance = number("guidance");
  job.loras = [...$("loras").children].map((row) => ({
    name: row.querySelector(".lora-name").value.trim(),
    scale: Number(row.querySelector(".lora-scale").value),
  }));
  const init = $("init_image").files[0];
  const mask = $("mask_image").files[0];
  if (init || mask) {
    // Without a start image the API names the missing field, as for any other job.
    if (init) job.init_image = await readFile(init);
    job.strength = number("strength");
    if (mask) job.mask_image = await readFile(mask);
  }
  const file = $("cn-image").files[0];
  if ($("cn-model").value.trim() || file) {
    job.controlnet = {
      model: $("cn-model").value.trim(),
      image: file ? await readFile(file) : "",
      scale: number("cn-scale"),
      start: number("cn-start"),
      end: number("cn-end"),
    };
  }
  return job;
}

function clearErrors() {
  for (const el of document.querySelectorAll("#submit-form .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#submit-form [aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Puts each field error next to its field (`loras[0].name` → the LoRA fieldset) and focuses the first. */
function showFieldErrors(fields) {
  let first = null;
  for (const { field, message } of fields) {
    const name = field.split(/[.[]/)[0];
    const box = $(name + "-error") || $("prompt-error");
    box.textContent = (box.textContent ? box.textContent + " " : "") + `${field}: ${message}`;
    const input = $(name);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  (first || $("prompt")).focus();
}

/** Wires the form; `onAccepted(status)` gets the new job, `onError(err)` any other failure. */
export function setupSubmit(onAccepted, onError) {
  $("add-lora").addEventListener("click", addLora);
  $("model").addEventListener("change", showModelLimits);
  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    if (!$("prompt").value.trim()) {
      showFieldErrors([{ field: "prompt", message: "write what to draw" }]);
      return;
    }
    const button = event.submitter || $("submit-form").querySelector("button[type=submit]");
    button.disabled = true;
    try {
      onAccepted(await call("POST", "/v1/jobs", await spec()));
    } catch (err) {
      if (err instanceof ApiError && err.fields.length) showFieldErrors(err.fields);
      else onError(err);
    } finally {
      button.disabled = false;
    }
  });
}
