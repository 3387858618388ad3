// Small helpers the page's modules share: building elements, and numbers as people read them.

/** `el("button", {class: "x", onclick}, "text", child)`: an element; attributes named `on...`
 *  become listeners, `null`/`false` ones are left out. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child != null && child !== false));
  return node;
}

export function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds || 0));
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

export function bytes(count) {
  if (count == null) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let value = count, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function percent(fraction) {
  return `${Math.round(100 * Math.min(1, Math.max(0, fraction || 0)))} %`;
}

export function since(epochSeconds) {
  if (!epochSeconds) return "";
  const ago = Date.now() / 1000 - epochSeconds;
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

/** Save `blob` as a file named `name` (the browser's download). */
export function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A progress bar: `bar.set(fraction)`. */
export function progressBar(label) {
  const fill = el("span", { class: "fill" });
  const bar = el("div", { class: "progress", role: "progressbar", "aria-label": label,
                          "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 }, fill);
  bar.set = (fraction) => {
    const value = Math.round(100 * Math.min(1, Math.max(0, fraction || 0)));
    bar.setAttribute("aria-valuenow", value);
    fill.style.width = `${value}%`;
  };
  return bar;
}
