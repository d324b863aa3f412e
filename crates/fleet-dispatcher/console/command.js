// What the console records about a submission, and the `fleet submit` command that repeats it.
//
// A job's status carries its model, steps and each image's seed and size, but not its prompt or
// LoRAs; the console therefore stores those in the job's `metadata` (returned untouched) under
// `console`, so the gallery and the copied command can show them.

/** The part of a job spec worth keeping in metadata (the control image itself is left out: too big). */
export function describe(spec) {
  const kept = { prompt: spec.prompt, width: spec.width, height: spec.height };
  if (spec.seed !== undefined) kept.seed = spec.seed;
  if (spec.negative_prompt) kept.negative_prompt = spec.negative_prompt;
  if (spec.guidance) kept.guidance = spec.guidance;
  if (spec.loras && spec.loras.length) kept.loras = spec.loras;
  if (spec.controlnet) {
    const { model, scale, start, end } = spec.controlnet;
    kept.controlnet = { model, scale, start, end };
  }
  if (spec.output && spec.output.format !== "png") kept.format = spec.output.format;
  return kept;
}

/** The recorded description of a job, or an empty one for jobs submitted elsewhere. */
export function recorded(status) {
  return (status.metadata && status.metadata.console) || {};
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
  for (const lora of about.loras || []) args.push("--lora", `${lora.name}:${lora.scale}`);
  if (status.priority !== "interactive") args.push("--priority", status.priority);
  if (about.format) args.push("--format", about.format);
  const line = args.map(quote).join(" ");
  return about.controlnet ? line + "   # ControlNet has no CLI flag: submit it as JSON with --file" : line;
}
