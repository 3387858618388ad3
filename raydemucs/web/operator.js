// The operator's view: the queue by state and by priority, the pools, every worker (state,
// model, memory, CPU, tasks done, restarts), webhook deliveries by state and what retention
// holds, and the dead letters (failed tasks) with retry.
// The service's status comes as it changes, from its event stream (/v1/status/events).

import { follow, request } from "./api.js";
import { bytes, el, since } from "./dom.js";

const COUNTS = [["queued", "Queued"], ["running", "Running"], ["waiting_retry", "Waiting to retry"],
                ["succeeded", "Succeeded"], ["failed", "Failed"], ["cancelled", "Cancelled"]];
const PRIORITIES = [["high", "High"], ["normal", "Normal"], ["low", "Low"]];
const DELIVERIES = [["delivered", "Delivered"], ["pending", "Being sent"], ["dead", "Dead"]];

function table(label, headings, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: 0 },
    el("table", {},
       el("thead", {}, el("tr", {}, ...headings.map((heading) => el("th", { scope: "col" }, heading)))),
       el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell) => el("td", {}, cell)))))));
}

/** A tile per `[key, label]` of `entries`, showing `counts[key]`; `attribute` names the key. */
function tiles(entries, counts, attribute) {
  return entries.map(([key, label]) =>
    el("div", { class: "tile", [attribute]: key, "data-zero": !counts[key] },
       el("span", { class: "tile-value" }, String(counts[key] ?? 0)),
       el("span", { class: "tile-label" }, label)));
}

function duration(seconds) {
  if (seconds == null) return "for ever";
  const days = seconds / 86400;
  if (days >= 1) return `${+days.toFixed(1)} day${days === 1 ? "" : "s"}`;
  return seconds >= 3600 ? `${+(seconds / 3600).toFixed(1)} h` : `${Math.round(seconds)} s`;
}

/** Webhook deliveries by state, and what the service holds and for how long. */
function keeping(webhooks, retention) {
  const next = retention.next_expiry_at;
  const held = (kind, amount, ttl, after) => el("li", { "data-held": kind },
    `${kind}: ${bytes(amount ?? 0)} held, each kept ${duration(ttl)} ${after}`);
  return [el("div", { class: "tiles" }, ...tiles(DELIVERIES, webhooks, "data-delivery")),
          el("ul", { class: "held" },
             held("Uploads", retention.uploads_bytes, retention.uploads_ttl_s, "after its last task"),
             held("Stems", retention.results_bytes, retention.results_ttl_s, "after their task ended"),
             el("li", { "data-held": "next" }, next ? `Next deletion ${new Date(next * 1000).toLocaleString()}`
                                                    : "Nothing due for deletion"))];
}

function uptime(seconds) {
  const hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60);
  return hours ? `${hours} h ${minutes} min` : `${minutes} min`;
}

export class OperatorView {
  constructor(root, { onStatus, onError }) {
    Object.assign(this, { root, onStatus, onError });
    this.status = null;
    this.failed = null;  // the dead letters, read again when the count of failed tasks moves
    this.failedCount = null;
  }

  /** Follow the service's status for ever: the header's summary, and this view when shown. */
  follow() {
    return follow("v1/status/events", {
      onEvent: ({ event, data }) => event === "status" && this.update(data),
      onError: this.onError,
    });
  }

  async update(status) {
    this.onStatus?.(status);
    if (status.view !== "operator") return;  // a tenant key's status: its own counts alone
    this.status = status;
    if (status.queue.failed !== this.failedCount) {
      this.failedCount = status.queue.failed;
      await this.readFailed();
    }
    this.show();
  }

  async readFailed() {
    try {
      this.failed = (await request("v1/tasks?state=failed&limit=20")).tasks;
    } catch (error) {
      this.onError?.(error);
    }
  }

  show() {
    if (!this.root.hidden && this.status && this.failed) this.render(this.status, this.failed);
  }

  render(status, failed) {
    const part = (selector, ...children) => this.root.querySelector(selector).replaceChildren(...children);
    part("#op-service",
         el("span", { class: `badge ${status.accepting ? "succeeded" : "failed"}` }, status.accepting ? "accepting" : "draining"),
         ` ${status.service} · up ${uptime(status.uptime_s)}`);
    part("#op-counts", ...tiles(COUNTS, status.queue, "data-count"));
    const byPriority = status.queued_by_priority ?? {};
    const most = Math.max(1, ...Object.values(byPriority));
    part("#op-priority", ...PRIORITIES.map(([key, label]) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(100 * (byPriority[key] ?? 0)) / most}%`;
      return el("div", { class: "priority-row" }, el("span", {}, label),
                el("div", { class: "progress", "aria-hidden": "true" }, fill),
                el("span", { class: "priority-count" }, `${byPriority[key] ?? 0} queued`));
    }));
    part("#op-pools", table("Pools", ["Pool", "Models", "Device", "Workers", "Starting", "Queued", "Size"],
      status.pools.map((pool) => [pool.name, pool.models.join(", ") || "default", pool.device ?? "any",
                                  String(pool.workers), String(pool.pending), String(pool.queued),
                                  `${pool.min_workers}–${pool.max_workers}`]), "No pools."));
    part("#op-workers", table("Workers", ["Worker", "Pool", "State", "Model", "Task", "RSS", "CPU", "Done", "Restarts"],
      status.workers.map((worker) => [
        el("code", {}, worker.worker_id), worker.pool,
        el("span", { class: `badge ${worker.state}` }, worker.state),
        worker.models.join(", ") || "–", worker.task_id ? el("code", {}, worker.task_id.slice(0, 8)) : "–",
        bytes(worker.rss_bytes), worker.cpu_percent == null ? "–" : `${worker.cpu_percent.toFixed(0)} %`,
        String(worker.tasks_done), String(worker.restarts)]), "No workers yet: they start with the first task."));
    part("#op-keeping", ...keeping(status.webhooks ?? {}, status.retention ?? {}));
    part("#op-dead", table("Dead letters", ["Task", "Project", "Error", "Failed", ""],
      failed.map((task) => [
        task.file_id, task.project, task.error ? `${task.error.type}: ${task.error.message}` : "–", since(task.finished_at),
        el("button", { type: "button", class: "ghost", "aria-label": `Retry ${task.file_id}`,
                       onclick: () => this.retry(task) }, "Retry")]), "No failed tasks."));
  }

  async retry(task) {
    try {
      await request(`v1/tasks/${task.task_id}/retry`, { method: "POST" });
    } catch (error) {
      this.onError?.(error);
    }
    await this.readFailed();
    this.show();
  }
}
