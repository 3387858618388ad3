// A stem's waveform on a canvas, drawn from the API's peaks summary (min and max per span):
// the part already played in the stem's colour, the rest dimmed.

export class Waveform {
  constructor(canvas, color) {
    this.canvas = canvas;
    this.color = color;
    this.peaks = null;
    this.played = 0;
    this.scale = 1;
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** The summary `{min: [...], max: [...]}` to draw, its samples times `scale` (the player
   *  scales a song's stems alike, so that its loudest reaches the edges). */
  show(peaks, scale = 1) {
    this.peaks = peaks;
    this.scale = scale;
    this.draw();
  }

  /** Mark `fraction` (0..1) of the stem as played. */
  progress(fraction) {
    if (Math.abs(fraction - this.played) * this.canvas.width < 0.5) return;
    this.played = fraction;
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    const middle = height / 2;
    context.fillStyle = "rgba(255, 255, 255, 0.08)";
    context.fillRect(0, Math.floor(middle), width, Math.max(1, ratio));
    if (!this.peaks || !this.peaks.min.length) return;
    const { min, max } = this.peaks;
    const step = Math.max(1, Math.round(2 * ratio));
    const playedTo = this.played * width;
    const reach = middle * 0.95 * this.scale;
    for (let x = 0; x < width; x += step) {
      const first = Math.floor((x / width) * min.length);
      const last = Math.max(first + 1, Math.floor(((x + step) / width) * min.length));
      let low = 0, high = 0;
      for (let i = first; i < last && i < min.length; i += 1) {
        low = Math.min(low, min[i]);
        high = Math.max(high, max[i]);
      }
      const top = Math.max(0, middle - high * reach);
      const bottom = Math.min(height, middle - low * reach);
      context.fillStyle = x < playedTo ? this.color : "rgba(255, 255, 255, 0.28)";
      context.fillRect(x, top, Math.max(1, step - ratio), Math.max(ratio, bottom - top));
    }
    context.fillStyle = "#fff";
    context.fillRect(Math.min(width - ratio, playedTo), 0, ratio, height);
  }
}
