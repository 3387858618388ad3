// New tasks: songs dropped or picked, the options of their separation, and one row per file
// with its upload's progress and then the task it became (or the server's one-line refusal).

import { request, upload } from "./api.js";
import { bytes, el, percent, progressBar } from "./dom.js";

const FOUR_STEMS = ["drums", "bass", "other", "vocals"];

export class Uploader {
  constructor(form, { onTask }) {
    this.form = form;
    this.onTask = onTask;
    this.rows = form.querySelector("#uploads");
    this.models = [];
    this.presets = [];
    const drop = form.querySelector("#drop");
    const picker = form.querySelector("#files");
    picker.addEventListener("change", () => { this.send([...picker.files]); picker.value = ""; });
    drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      this.send([...event.dataTransfer.files]);
    });
    this.field("model").addEventListener("change", () => this.showStems());
    this.field("preset").addEventListener("change", () => this.showStems());
  }

  field(name) {
    return this.form.querySelector(`[name="${name}"]`);
  }

  /** Fill the model choice from /v1/models (the service's default first), and the ensemble
   * presets from /v1/presets (several models as one task). */
  async loadModels() {
    const [models, presets] = await Promise.all([request("v1/models"), request("v1/presets")]);
    this.models = models.models;
    this.presets = presets.presets;
    this.field("model").replaceChildren(...this.models.map((model) =>
      el("option", { value: model.name, title: model.device ? `runs on ${model.device}` : null }, model.name)));
    this.field("preset").replaceChildren(el("option", { value: "" }, "None: one model"),
      ...this.presets.map((preset) =>
        el("option", { value: preset.name, title: `models: ${preset.models.join(", ")}` }, preset.name)));
    this.showStems();
  }

  /** The stems choice: the model's (all, or one and the rest); a preset makes its own stems. */
  showStems() {
    const preset = this.field("preset").value;
    this.field("model").disabled = this.field("two_stems").disabled = Boolean(preset);
    if (preset) {
      const stems = this.presets.find((p) => p.name === preset)?.stems ?? [];
      this.field("two_stems").replaceChildren(el("option", { value: "" }, `Its ${stems.length} stems`));
      return;
    }
    const model = this.models.find((m) => m.name === this.field("model").value);
    const stems = model?.stems ?? FOUR_STEMS;
    this.field("two_stems").replaceChildren(
      el("option", { value: "" }, `All ${stems.length} stems`),
      ...stems.map((stem) => el("option", { value: stem }, `${stem} + the rest`)));
  }

  fields() {
    const preset = this.field("preset").value;
    const names = preset ? ["preset", "format", "priority", "project"]
      : ["model", "two_stems", "format", "priority", "project"];
    return Object.fromEntries(names.map((name) => [name, this.field(name).value.trim()]));
  }

  send(files) {
    const fields = this.fields();
    return Promise.all(files.map((file) => this.sendOne(file, fields)));
  }

  async sendOne(file, fields) {
    const bar = progressBar(`Upload of ${file.name}`);
    const note = el("span", { class: "upload-note" }, "waiting…");
    const size = el("span", { class: "upload-size" }, bytes(file.size));
    const row = el("li", { class: "upload", "data-state": "sending" },
      el("div", { class: "upload-head" }, el("span", { class: "upload-name" }, file.name), size, note),
      el("div", { class: "task-progress" }, bar, el("span", { class: "percent" }, "0 %")));
    this.rows.prepend(row);
    const shown = row.querySelector(".percent");
    try {
      const task = await upload(file, fields, (sent, total) => {
        bar.set(sent / total);
        shown.textContent = percent(sent / total);
        note.textContent = sent < total ? "uploading…" : "checking…";
      });
      bar.set(1);
      shown.textContent = percent(1);
      row.dataset.state = "sent";
      note.textContent = `sent · task ${task.task_id.slice(0, 8)}`;
      this.onTask(task);
    } catch (error) {
      row.dataset.state = "refused";
      note.textContent = error.message;
      note.setAttribute("role", "alert");
    }
    row.firstChild.append(el("button", { type: "button", class: "ghost icon-only dismiss",
                                         "aria-label": `Dismiss ${file.name}`, onclick: () => row.remove() }, "✕"));
  }
}
