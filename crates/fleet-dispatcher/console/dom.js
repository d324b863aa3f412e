// Small DOM helpers every page uses.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** Appends `name: value` to a <dl>; an empty value adds nothing. */
export function param(list, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}
