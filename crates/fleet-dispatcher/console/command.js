// What a job asked for, and the `fleet submit` command that repeats it.
//
// A job's status carries its request (`request`: prompt, size, seed, LoRAs, ControlNet, ...),
// however it was submitted. Records written before the status kept it have none; for those the
// console reads what it stored in the job's `metadata.console` when it submitted them.

/** The description of a job's request, or an empty one when its record keeps none. */
export function recorded(status) {
  const r = status.request;
  if (!r) return (status.metadata && status.metadata.console) || {};
  const about = { prompt: r.prompt, width: r.width, height: r.height, seed: r.seed };
  if (r.negative_prompt) about.negative_prompt = r.negative_prompt;
  if (r.guidance) about.guidance = r.guidance;
  if (r.loras && r.loras.length) about.loras = r.loras;
  if (r.controlnet) about.controlnet = r.controlnet;
  if (r.init_image) about.init = { image: r.init_image, strength: r.strength, mask: r.mask_image };
  if (r.output && r.output.format !== "png") about.format = r.output.format;
  return about;
}

function quote(value) {
  const text = String(value);
  return /^[A-Za-z0-9_.:\/=+-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
}

/** The `fleet submit` command that makes the same images, or null for a job with no recorded prompt. */
export function fleetCommand(status) {
  const about = recorded(status);
  if (!about.prompt) return null;
  const first = (status.result || [])[0];
  const args = ["fleet", "submit", "--prompt", about.prompt, "--model", status.model, "--steps", status.progress.steps];
  // the seed the dispatcher drew (first image's) when the form left it empty
  const seed = first ? first.seed : about.seed;
  if (about.width) args.push("--width", about.width, "--height", about.height);
  if (seed !== undefined) args.push("--seed", seed);
  args.push("--num-images", status.progress.images_total);
  if (about.negative_prompt) args.push("--negative-prompt", about.negative_prompt);
  if (about.guidance) args.push("--guidance", about.guidance);
  // `fleet submit --lora` takes library names only; a LoRA given by URL has no flag.
  for (const lora of about.loras || []) if (lora.name) args.push("--lora", `${lora.name}:${lora.scale}`);
  if (status.priority !== "interactive") args.push("--priority", status.priority);
  if (about.format) args.push("--format", about.format);
  // The record keeps input images by reference only: an `s3://` one can be passed again.
  if (about.init) {
    for (const [flag, record] of [["--init-image", about.init.image], ["--mask-image", about.init.mask]]) {
      if (record && record.image.startsWith("s3://")) args.push(flag, record.image);
    }
    args.push("--strength", about.init.strength);
  }
  const line = args.map(quote).join(" ");
  const inline = about.init && [about.init.image, about.init.mask].some((r) => r && !r.image.startsWith("s3://"));
  if (inline) return line + "   # add --init-image/--mask-image FILE: images sent inline are not kept";
  return about.controlnet ? line + "   # ControlNet has no CLI flag: submit it as JSON with --file" : line;
}
