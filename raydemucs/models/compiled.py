"""HTDemucs's network exported (`torch.export`) and compiled by OpenVINO for a CPU worker.

HTDemucs turns a segment into a spectrogram (STFT), runs a network of convolutions and a
transformer on it and on the waveform, and turns its output back (masking, inverse STFT). That
network holds all the arithmetic and no complex numbers, so it exports and compiles (OpenVINO,
the extra `raydemucs[openvino]`) where the whole model does not; the STFT and the masking stay in
torch, as in demucs. On this project's CPU it takes 1.3-1.5x less CPU than eager fp32 in fp32
(within 1 LSB of demucs) and 2.1-2.25x less in bf16 (docs/precision.md).

The export is saved under `cache_dir()` by a digest of the weights and the segment length, and
OpenVINO keeps what it compiles from it there (by precision and threads), so a worker builds it
once and a restarted one loads it in seconds.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import torch as th
from torch import nn

logger = logging.getLogger(__name__)

NETWORK_VERSION = 1   # bump when SpectralNetwork changes: cached exports are rebuilt
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class SpectralNetwork(nn.Module):
    """`HTDemucs.forward` (demucs 4.1, eval) from the spectrogram's magnitude to the mask: takes
    `mag` `[n, 2 * channels, freqs, frames]` and the padded mix `[n, channels, length]`, returns
    the spectrogram estimate `[n, sources, 2 * channels, freqs, frames]` and the time branch's
    `[n, sources, channels, length]`, both in the mix's scale."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, mag: th.Tensor, mix: th.Tensor):
        m = self.model
        x, xt = mag, mix
        mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
        meant, stdt = xt.mean(dim=(1, 2), keepdim=True), xt.std(dim=(1, 2), keepdim=True)
        x, xt = (x - mean) / (1e-5 + std), (xt - meant) / (1e-5 + stdt)
        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                xt = m.tencoder[idx](xt)
                if m.tencoder[idx].empty:
                    inject = xt
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = th.arange(x.shape[-2], device=x.device)
                x = x + m.freq_emb_scale * m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
            saved.append(x)
        if m.crosstransformer:
            x, xt = self._cross(x, xt)
        offset = m.depth - len(m.tdecoder)
        for idx, decode in enumerate(m.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, lengths_t.pop(-1))
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), lengths_t.pop(-1))
        batch, sources = mag.shape[0], len(m.sources)
        x = x.view(batch, sources, -1, *mag.shape[-2:]) * std[:, None] + mean[:, None]
        xt = xt.view(batch, sources, -1, mix.shape[-1]) * stdt[:, None] + meant[:, None]
        return x, xt

    def _cross(self, x, xt):
        m = self.model
        if not m.bottom_channels:
            return m.crosstransformer(x, xt)
        b, c, f, t = x.shape
        x = m.channel_upsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
        x, xt = m.crosstransformer(x, m.channel_upsampler_t(xt))
        b, c, f, t = x.shape
        x = m.channel_downsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
        return x, m.channel_downsampler_t(xt)


def spectral_forward(model, mix: th.Tensor, network) -> th.Tensor:
    """`model(mix)` for an HTDemucs in eval, with `network(mag, padded_mix)` for its middle."""
    length = mix.shape[-1]
    training_length = int(model.segment * model.samplerate)
    if length < training_length:
        mix = th.nn.functional.pad(mix, (0, training_length - length))
    z = model._spec(mix)
    x, xt = network(model._magnitude(z), mix)
    out = xt + model._ispec(model._mask(z, x), training_length)
    return out[..., :length]


def cache_dir() -> Path:
    """Where exported networks are kept: `$XDG_CACHE_HOME/raydemucs/networks` (~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "raydemucs" / "networks"


def weights_digest(model) -> str:
    """A digest of the model's class, arguments and weights: what its export depends on."""
    digest = hashlib.sha256(f"{type(model).__qualname__}|{NETWORK_VERSION}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(th.uint8).numpy())
    return digest.hexdigest()[:20]


def _example(model, batch: int = 2):
    """Inputs for the export: a batch of 2 (1 would be specialised), the model's segment."""
    mix = th.randn(batch, model.audio_channels, int(model.segment * model.samplerate))
    return model._magnitude(model._spec(mix)), mix


def export_network(model, path: Path) -> None:
    """Export `model`'s network (any batch size) as OpenVINO IR at `path` (.xml and .bin),
    written to a temp name and renamed, so that a concurrent build never reads half a file."""
    import openvino as ov

    with th.no_grad():
        example = _example(model)
        batch = th.export.Dim("batch", min=1, max=4096)
        program = th.export.export(SpectralNetwork(model).eval(), example,
                                   dynamic_shapes=({0: batch}, {0: batch}))
        converted = ov.convert_model(program)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    try:
        ov.save_model(converted, staging / path.name, compress_to_fp16=False)
        os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class CompiledNetwork:
    """An HTDemucs network compiled by OpenVINO for the CPU: `network(mag, mix)` -> `(x, xt)`."""

    def __init__(self, model, precision: str, threads: int, folder: Path | None = None):
        import openvino as ov

        folder = Path(folder) if folder else cache_dir()
        length = int(model.segment * model.samplerate)
        self.path = folder / f"{weights_digest(model)}-{length}-ov{ov.__version__.split('-')[0]}.xml"
        self.built = not self.path.exists()
        if self.built:
            export_network(model, self.path)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(folder / "compiled")})
        # unpinned: each worker process would pin its threads from the first core on, so two
        # workers of one thread each would share one core and leave the other idle
        self.compiled = core.compile_model(
            core.read_model(self.path), "CPU",
            {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
             "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
             "ENABLE_CPU_PINNING": False})

    def __call__(self, mag: th.Tensor, mix: th.Tensor):
        request = self.compiled.create_infer_request()  # one per call: passes may overlap
        results = request.infer([mag.float().numpy(), mix.float().numpy()])
        return tuple(th.from_numpy(results[output]) for output in self.compiled.outputs)


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: network}
_building = threading.Lock()


def compiled_network(model, precision: str, threads: int | None = None) -> CompiledNetwork:
    """The model's network compiled for `precision`, built once per process (and on disk)."""
    threads = threads or th.get_num_threads()
    with _building:
        networks = _compiled.setdefault(model, {})
        if (precision, threads) not in networks:
            network = CompiledNetwork(model, precision, threads)
            logger.info("%s network for %s (%s, %d threads)", "exported" if network.built
                        else "loaded the exported", network.path.name, precision, threads)
            networks[precision, threads] = network
        return networks[precision, threads]
