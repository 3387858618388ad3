// The live list of the caller's tasks: the newest page first, then every change as the
// service's event stream (/v1/events) sends it; no polling. Cancel, retry, and open the player.

import { follow, request } from "./api.js";
import { el, percent, progressBar, since } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);

function waiting(task) {
  if (task.state !== "queued") return null;
  if (task.queue_position == null) return task.attempts ? "waiting to retry" : "queued";
  return task.queue_position === 0 ? "next in queue" : `${task.queue_position} ahead in queue`;
}

export class TaskList {
  constructor(list, empty, live, { onOpen, onError }) {
    Object.assign(this, { list, empty, live, onOpen, onError });
    this.tasks = new Map();
    this.rows = new Map();
  }

  /** Show the newest tasks, then follow the stream for ever (reconnecting when it drops). */
  follow() {
    return follow("v1/events", {
      before: async () => (await request("v1/tasks?limit=50")).tasks.forEach((task) => this.show(task)),
      onEvent: ({ event, data }) => event === "task" && this.show(data),
      onState: (state) => this.showLive(state),
      onError: this.onError,
    });
  }

  showLive(state) {
    this.live.dataset.state = state;
    this.live.textContent = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…" }[state];
  }

  /** Add or update one task's row (the newest at the top). */
  show(task) {
    const known = this.tasks.get(task.task_id);
    this.tasks.set(task.task_id, task);
    let row = this.rows.get(task.task_id);
    if (!row) {
      row = this.row(task);
      this.rows.set(task.task_id, row);
      const after = [...this.tasks.values()].filter((other) => other.submitted_at > task.submitted_at).length;
      this.list.insertBefore(row, this.list.children[after] ?? null);
    }
    this.update(row, task, known);
    this.empty.hidden = this.tasks.size > 0;
  }

  row(task) {
    const row = el("li", { class: "task", "data-task": task.task_id });
    row.parts = {
      name: el("span", { class: "task-name" }, task.file_id),
      badge: el("span", { class: "badge" }),
      meta: el("p", { class: "task-meta" }),
      bar: progressBar(`Progress of ${task.file_id}`),
      percent: el("span", { class: "percent" }),
      error: el("p", { class: "task-error", role: "status" }),
      actions: el("div", { class: "task-actions" }),
    };
    const { parts } = row;
    row.append(
      el("div", { class: "task-main" },
         el("div", { class: "task-title" }, parts.name, parts.badge),
         parts.meta,
         el("div", { class: "task-progress" }, parts.bar, parts.percent),
         parts.error),
      parts.actions);
    return row;
  }

  update(row, task, known) {
    const { parts } = row;
    row.dataset.state = task.state;
    parts.badge.textContent = task.state;
    parts.badge.className = `badge ${task.state}`;
    const details = [task.project, task.model, task.options?.two_stems && `${task.options.two_stems} + rest`,
                     task.priority !== "normal" && `${task.priority} priority`, waiting(task),
                     task.attempts > 1 && `attempt ${task.attempts}`,
                     task.audio_duration_s && `${task.audio_duration_s.toFixed(1)} s of audio`,
                     task.run_s && task.state === "succeeded" && `took ${task.run_s.toFixed(1)} s`,
                     task.expired_at && "stems deleted (retention)", since(task.submitted_at)];
    parts.meta.textContent = details.filter(Boolean).join(" · ");
    const progress = task.state === "succeeded" ? 1 : task.progress;
    parts.bar.set(progress);
    parts.percent.textContent = percent(progress);
    parts.error.textContent = task.error ? `${task.error.type}: ${task.error.message}` : "";
    parts.error.hidden = !task.error;
    if (known?.state !== task.state || known?.expired_at !== task.expired_at) {
      parts.actions.replaceChildren(...this.actions(task));
    }
  }

  actions(task) {
    const button = (label, onclick, kind = "ghost") =>
      el("button", { type: "button", class: kind, "aria-label": `${label} ${task.file_id}`, onclick }, label);
    if (task.state === "succeeded" && task.expired_at) return [];  // nothing left to hear
    if (task.state === "succeeded") return [button("Listen", () => this.onOpen(this.tasks.get(task.task_id)), "primary")];
    if (ACTIVE.has(task.state)) return [button("Cancel", () => this.act(task, "DELETE", ""))];
    return [button("Retry", () => this.act(task, "POST", "/retry"))];
  }

  async act(task, method, suffix) {
    try {
      this.show(await request(`v1/tasks/${task.task_id}${suffix}`, { method }));
    } catch (error) {
      this.onError?.(error);
    }
  }
}
