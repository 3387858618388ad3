// The player: every stem of a task on one Web Audio transport, so they stay sample-locked.
// Each stem is an AudioBuffer played by its own source node, all started at the same context
// time and offset; per stem a gain (volume, mute, solo) and an analyser (its level meter).

import { request } from "./api.js";
import { clock, el, save } from "./dom.js";
import { Waveform } from "./waveform.js";

const COLORS = { drums: "#f59e0b", bass: "#a78bfa", other: "#2dd4bf", vocals: "#f472b6",
                 guitar: "#60a5fa", piano: "#facc15" };
const MORE_COLORS = ["#60a5fa", "#34d399", "#fb7185", "#fbbf24"];
const PEAK_POINTS = 1200;
const START_AHEAD_S = 0.05;  // every source starts at the same moment, a little ahead
const MEDIA = { wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac" };

/** A level meter's reach (0..1) for an RMS level: -60 dBFS to 0 dBFS. */
function meter(level) {
  return level > 0 ? Math.min(1, Math.max(0, 1 + (20 * Math.log10(level)) / 60)) : 0;
}

export class Player {
  constructor(root, onClose) {
    this.root = root;
    this.onClose = onClose;
    this.context = null;
    this.task = null;
    this.stems = [];
    this.playing = false;
    this.offset = 0;  // the position (s) playback started from, or paused at
    this.startedAt = 0;  // the context time playback started at
    this.duration = 0;
    this.dragging = false;
    root.addEventListener("keydown", (event) => {
      if (event.key === " " && event.target === root) {
        event.preventDefault();
        this.toggle();
      }
    });
  }

  /** Load a succeeded task's stems and show them (stops what played before). */
  async open(task) {
    if (this.task?.task_id === task.task_id && !this.root.hidden) {
      this.root.scrollIntoView({ behavior: "smooth", block: "start" });
      return;
    }
    this.stop();
    const token = (this.token = {});
    this.task = task;
    this.context ??= new AudioContext();
    this.offset = 0;
    this.stems = Object.keys(task.outputs).map((name, index) => this.stem(name, index));
    this.render();
    this.root.hidden = false;
    this.root.scrollIntoView({ behavior: "smooth", block: "start" });
    const summaries = await Promise.all(this.stems.map((stem) => this.load(stem)));
    if (this.token !== token) return;
    const loudest = Math.max(0, ...summaries.flatMap((p) => [-Math.min(0, ...p.min), Math.max(0, ...p.max)]));
    const scale = loudest > 0 ? Math.min(20, 1 / loudest) : 1;
    this.stems.forEach((stem, index) => stem.waveform.show(summaries[index], scale));
    this.duration = Math.max(...this.stems.map((stem) => stem.buffer.duration));
    this.seekBar.max = this.duration;
    this.seekBar.disabled = this.playButton.disabled = false;
    this.root.classList.remove("loading");
    this.status.textContent = "";
    this.tick();
  }

  stem(name, index) {
    const gain = this.context.createGain();
    const meter = this.context.createAnalyser();
    meter.fftSize = 1024;
    gain.connect(meter);
    meter.connect(this.context.destination);
    return { name, color: COLORS[name] ?? MORE_COLORS[index % MORE_COLORS.length], gain, meter,
             samples: new Float32Array(meter.fftSize), volume: 1, muted: false, soloed: false,
             level: 0, effective: 1, source: null, offset: 0, startedAt: 0, buffer: null, bytes: null };
  }

  async load(stem) {
    const base = `v1/tasks/${this.task.task_id}/stems/${encodeURIComponent(stem.name)}`;
    const [response, summary] = await Promise.all([
      request(base, { raw: true }), request(`${base}/peaks?points=${PEAK_POINTS}`)]);
    stem.bytes = await response.arrayBuffer();
    stem.buffer = await this.context.decodeAudioData(stem.bytes.slice(0));
    return summary;
  }

  // -- the transport ------------------------------------------------------------------------
  position() {
    if (!this.playing) return this.offset;
    return Math.min(this.duration, this.offset + Math.max(0, this.context.currentTime - this.startedAt));
  }

  async play() {
    if (this.playing || !this.duration) return;
    await this.context.resume();
    if (this.offset >= this.duration) this.offset = 0;
    const when = this.context.currentTime + START_AHEAD_S;
    for (const stem of this.stems) {
      const source = this.context.createBufferSource();
      source.buffer = stem.buffer;
      source.connect(stem.gain);
      source.start(when, this.offset);
      Object.assign(stem, { source, startedAt: when, offset: this.offset });
    }
    this.startedAt = when;
    this.playing = true;
    this.showPlaying();
  }

  pause() {
    if (!this.playing) return;
    this.offset = this.position();
    this.silence();
    this.showPlaying();
  }

  toggle() {
    return this.playing ? this.pause() : this.play();
  }

  seek(seconds) {
    const resume = this.playing;
    this.silence();
    this.offset = Math.min(Math.max(0, seconds), this.duration);
    if (resume) this.play();
    this.tick();
  }

  silence() {
    for (const stem of this.stems) {
      stem.source?.stop();
      stem.source?.disconnect();
      stem.source = null;
    }
    this.playing = false;
  }

  stop() {
    this.silence();
    for (const stem of this.stems) stem.meter.disconnect();
    this.stems = [];
    this.duration = 0;
    cancelAnimationFrame(this.frame);
    this.token = null;
  }

  close() {
    this.stop();
    this.task = null;
    this.root.hidden = true;
    this.onClose?.();
  }

  // -- the mix -----------------------------------------------------------------------------
  mix() {
    const anySolo = this.stems.some((stem) => stem.soloed);
    for (const stem of this.stems) {
      const audible = !stem.muted && (!anySolo || stem.soloed);
      stem.effective = audible ? stem.volume : 0;
      stem.gain.gain.setTargetAtTime(stem.effective, this.context.currentTime, 0.01);
      stem.muteButton.setAttribute("aria-pressed", stem.muted);
      stem.soloButton.setAttribute("aria-pressed", stem.soloed);
      stem.row.classList.toggle("silent", !audible);
    }
  }

  /** What plays, as the page holds it: each stem's own source position, gain and level. */
  state() {
    const now = this.context?.currentTime ?? 0;
    return {
      task_id: this.task?.task_id ?? null, playing: this.playing, duration: this.duration,
      position: this.position(),
      stems: this.stems.map((stem) => ({
        name: stem.name, muted: stem.muted, soloed: stem.soloed, volume: stem.volume,
        gain: stem.effective, level: stem.level,
        position: stem.source ? Math.min(stem.buffer.duration, stem.offset + Math.max(0, now - stem.startedAt))
                              : this.offset,
      })),
    };
  }

  tick() {
    cancelAnimationFrame(this.frame);
    const position = this.position();
    if (this.playing && position >= this.duration) {
      this.silence();
      this.offset = 0;
      this.showPlaying();
    }
    for (const stem of this.stems) {
      stem.meter.getFloatTimeDomainData(stem.samples);
      let sum = 0;
      for (const sample of stem.samples) sum += sample * sample;
      stem.level = this.playing ? Math.sqrt(sum / stem.samples.length) : 0;
      stem.levelBar.style.transform = `scaleX(${meter(stem.level)})`;
      stem.waveform.progress(this.duration ? position / this.duration : 0);
    }
    if (!this.dragging) this.seekBar.value = position;
    this.time.textContent = `${clock(position)} / ${clock(this.duration)}`;
    if (this.playing) this.frame = requestAnimationFrame(() => this.tick());
  }

  showPlaying() {
    this.playButton.setAttribute("aria-label", this.playing ? "Pause" : "Play");
    this.playButton.classList.toggle("playing", this.playing);
    this.tick();
  }

  // -- downloads ---------------------------------------------------------------------------
  download(stem) {
    const format = this.task.options.format;
    save(new Blob([stem.bytes], { type: MEDIA[format] }), `${this.task.file_id} - ${stem.name}.${format}`);
  }

  async downloadZip() {
    const response = await request(`v1/tasks/${this.task.task_id}/stems.zip`, { raw: true });
    save(await response.blob(), `${this.task.project}-${this.task.file_id}.zip`);
  }

  // -- the view ----------------------------------------------------------------------------
  render() {
    const { task } = this;
    this.playButton = el("button", { class: "play", type: "button", "aria-label": "Play", disabled: true,
                                     onclick: () => this.toggle() }, el("span", { class: "icon", "aria-hidden": "true" }));
    this.seekBar = el("input", { type: "range", class: "seek", min: 0, max: 1, step: 0.01, value: 0,
                                 "aria-label": "Position", disabled: true,
                                 oninput: (event) => { this.dragging = true; this.seek(Number(event.target.value)); },
                                 onchange: () => { this.dragging = false; } });
    this.time = el("span", { class: "time", "aria-live": "off" }, "0:00 / 0:00");
    this.status = el("span", { class: "status" }, "Loading stems…");
    this.root.classList.add("loading");
    this.root.replaceChildren(
      el("div", { class: "card-head" },
         el("div", {},
            el("h2", { id: "player-title" }, task.file_id),
            el("p", { class: "meta" }, `${task.project} · ${task.model} · ${Object.keys(task.outputs).length} stems`)),
         el("div", { class: "head-actions" },
            el("button", { type: "button", class: "ghost", onclick: () => this.downloadZip() }, "Download all (zip)"),
            el("button", { type: "button", class: "ghost icon-only", "aria-label": "Close player",
                           onclick: () => this.close() }, "✕"))),
      el("div", { class: "transport" }, this.playButton, this.time, this.seekBar, this.status),
      el("ul", { class: "stems", "aria-label": "Stems" }, ...this.stems.map((stem) => this.stemRow(stem))));
  }

  stemRow(stem) {
    const toggle = (flag, label) => el("button", {
      type: "button", class: `toggle ${label.toLowerCase()}`, "aria-pressed": "false",
      "aria-label": `${label} ${stem.name}`, title: `${label} ${stem.name}`,
      onclick: () => { stem[flag] = !stem[flag]; this.mix(); },
    }, label[0]);
    stem.muteButton = toggle("muted", "Mute");
    stem.soloButton = toggle("soloed", "Solo");
    stem.levelBar = el("span", { class: "level-fill" });
    const canvas = el("canvas", { class: "wave", "aria-hidden": "true" });
    canvas.addEventListener("click", (event) => {
      const box = canvas.getBoundingClientRect();
      this.seek(((event.clientX - box.left) / box.width) * this.duration);
    });
    stem.waveform = new Waveform(canvas, stem.color);
    const volume = el("input", {
      type: "range", class: "volume", min: 0, max: 1, step: 0.01, value: 1, "aria-label": `Volume of ${stem.name}`,
      oninput: (event) => { stem.volume = Number(event.target.value); this.mix(); },
    });
    stem.row = el("li", { class: "stem", "data-stem": stem.name },
      el("div", { class: "stem-side" },
         el("div", { class: "stem-name" }, el("span", { class: "dot", "aria-hidden": "true" }), stem.name,
            el("span", { class: "level", "aria-hidden": "true" }, stem.levelBar)),
         el("div", { class: "stem-controls" }, stem.muteButton, stem.soloButton, volume,
            el("button", { type: "button", class: "ghost icon-only download", "aria-label": `Download ${stem.name}`,
                           title: `Download ${stem.name}`, onclick: () => this.download(stem) }, "↓"))),
      canvas);
    stem.row.style.setProperty("--stem", stem.color);  // through the CSSOM: the page's policy has no inline styles
    return stem.row;
  }
}
