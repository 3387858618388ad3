"""The band-split RoFormer (`BSRoformer`) and the mel-band RoFormer (`MelBandRoformer`), built
from a checkpoint's `model:` options, their state dicts keyed and shaped as the community
checkpoints (Music-Source-Separation-Training's model code) key and shape them.

`forward(mix)`: `mix` is `[batch, channels, time]` (channels 2 when `stereo`, else 1); the output
is always `[batch, stems, channels, time]`, one stem included, the same length as the input.
The STFT, the complex masks and the inverse STFT run in fp32 under `torch.autocast`.
Options that change nothing at inference (dropout, losses, attention kernels) are not taken here:
`config.RoformerConfig.network_kwargs` leaves them out.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import BandSplit, MaskEstimator, RMSNorm, Rotary, Transformer


class Roformer(nn.Module):
    """What both architectures share: STFT, axial transformer layers (over time, then over
    bands, optionally a linear one over both first), masks applied to the spectrogram, inverse
    STFT. Subclasses choose the bands (`widths`) and how band masks return to frequencies."""

    def __init__(self, *, dim: int, depth: int, widths: tuple[int, ...], stereo: bool,
                 num_stems: int, time_transformer_depth: int, freq_transformer_depth: int,
                 linear_transformer_depth: int, dim_head: int, heads: int, norm_output: bool,
                 stft_n_fft: int, stft_hop_length: int, stft_win_length: int,
                 stft_normalized: bool, zero_dc: bool, mask_hidden_layers: int,
                 mlp_expansion_factor: int):
        super().__init__()
        self.channels, self.num_stems, self.zero_dc = (2 if stereo else 1), num_stems, zero_dc
        self.stft_options = dict(n_fft=stft_n_fft, hop_length=stft_hop_length,
                                 win_length=stft_win_length, normalized=stft_normalized)
        shared = dict(dim=dim, heads=heads, dim_head=dim_head, norm_output=norm_output)
        time_rotary, freq_rotary = Rotary(dim_head), Rotary(dim_head)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            block = [Transformer(depth=linear_transformer_depth, **shared)] \
                if linear_transformer_depth > 0 else []
            block += [Transformer(depth=time_transformer_depth, rotary=time_rotary, **shared),
                      Transformer(depth=freq_transformer_depth, rotary=freq_rotary, **shared)]
            self.layers.append(nn.ModuleList(block))
        self.band_split = BandSplit(dim, widths)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, widths, mask_hidden_layers, mlp_expansion_factor)
            for _ in range(num_stems))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        batch, channels, length = mix.shape
        if channels != self.channels:
            raise ValueError(f"this model separates {self.channels}-channel audio, "
                             f"not {channels}-channel")
        spectrum = self.spectrogram(mix)  # [batch, freqs * channels, frames, 2], fp32
        x = self.band_split(self.band_input(spectrum))
        x = self.axial_layers(x)
        masks = torch.stack([estimate(x) for estimate in self.mask_estimators], dim=1)
        masks = masks.float().unflatten(-1, (-1, 2)).transpose(2, 3)  # [b, n, f, t, 2]
        masked = torch.view_as_complex(spectrum).unsqueeze(1) * self.frequency_masks(masks)
        return self.waveforms(masked, length)

    def window(self, device: torch.device) -> torch.Tensor:
        """The STFT's Hann window, in fp32 whatever the model's dtype."""
        return torch.hann_window(self.stft_options["win_length"], device=device)

    def spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        """`[batch, channels, time]` -> `[batch, freqs * channels, frames, 2]` (frequency major,
        channel minor), in fp32."""
        batch, channels, length = mix.shape
        with torch.autocast(mix.device.type, enabled=False):
            spectrum = torch.stft(mix.float().reshape(batch * channels, length),
                                  window=self.window(mix.device), return_complex=True,
                                  **self.stft_options)
        spectrum = torch.view_as_real(spectrum)
        return spectrum.unflatten(0, (batch, channels)).transpose(1, 2).flatten(1, 2)

    def axial_layers(self, x: torch.Tensor) -> torch.Tensor:
        """`[batch, frames, bands, dim]` through each layer's transformers: linear (over frames
        and bands at once), over frames for each band, over bands for each frame."""
        batch, frames, bands, dim = x.shape
        for block in self.layers:
            *linear, over_time, over_bands = block
            for transformer in linear:
                x = transformer(x.reshape(batch, frames * bands, dim)).view(x.shape)
            x = over_time(x.transpose(1, 2).reshape(batch * bands, frames, dim))
            x = x.view(batch, bands, frames, dim).transpose(1, 2)
            x = over_bands(x.reshape(batch * frames, bands, dim)).view(batch, frames, bands, dim)
        return self.final(x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The features after the last layer (BS-RoFormer norms them once more)."""
        return x

    def waveforms(self, masked: torch.Tensor, length: int) -> torch.Tensor:
        """`[batch, stems, freqs * channels, frames]` complex -> `[batch, stems, channels,
        length]` by the inverse STFT (the DC bin zeroed first when `zero_dc`)."""
        batch, stems, _, frames = masked.shape
        masked = masked.unflatten(2, (-1, self.channels)).transpose(2, 3)
        masked = masked.reshape(batch * stems * self.channels, -1, frames)
        if self.zero_dc:
            masked = masked.index_fill(1, torch.tensor(0, device=masked.device), 0.0)
        with torch.autocast(masked.device.type, enabled=False):
            audio = torch.istft(masked, window=self.window(masked.device), length=length,
                                **self.stft_options)
        return audio.view(batch, stems, self.channels, length)


class BSRoformer(Roformer):
    """Band-split RoFormer (Lu et al., 2023): contiguous bands of `freqs_per_bands` STFT bins."""

    def __init__(self, *, dim: int, depth: int, freqs_per_bands: tuple[int, ...],
                 stereo: bool = False, num_stems: int = 1, time_transformer_depth: int = 2,
                 freq_transformer_depth: int = 2, linear_transformer_depth: int = 0,
                 dim_head: int = 64, heads: int = 8, stft_n_fft: int = 2048,
                 stft_hop_length: int = 512, stft_win_length: int = 2048,
                 stft_normalized: bool = False, zero_dc: bool = True,
                 mask_estimator_depth: int = 2, mlp_expansion_factor: int = 4):
        bins = stft_n_fft // 2 + 1
        if len(freqs_per_bands) < 2 or sum(freqs_per_bands) != bins:
            raise ValueError(f"freqs_per_bands must be at least two bands that sum to {bins} "
                             f"(stft_n_fft // 2 + 1), not {sum(freqs_per_bands)}")
        channels = 2 if stereo else 1
        super().__init__(
            dim=dim, depth=depth, widths=tuple(2 * f * channels for f in freqs_per_bands),
            stereo=stereo, num_stems=num_stems, time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            linear_transformer_depth=linear_transformer_depth, dim_head=dim_head, heads=heads,
            norm_output=False, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length, stft_normalized=stft_normalized, zero_dc=zero_dc,
            mask_hidden_layers=mask_estimator_depth - 1,  # mel-band's MLP has one more
            mlp_expansion_factor=mlp_expansion_factor)
        self.final_norm = RMSNorm(dim)

    def band_input(self, spectrum: torch.Tensor) -> torch.Tensor:
        """`[batch, bins, frames, 2]` -> `[batch, frames, bins * 2]`."""
        return spectrum.transpose(1, 2).flatten(2)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_norm(x)

    def frequency_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """The bands cover each bin once: the masks are the bins' masks."""
        return torch.view_as_complex(masks.contiguous())


class MelBandRoformer(Roformer):
    """Mel-band RoFormer (Wang et al., 2023): overlapping bands, the bins where each of
    `num_bands` mel filters is non-zero; a bin's mask is the mean of its bands' masks."""

    def __init__(self, *, dim: int, depth: int, num_bands: int = 60, sample_rate: int = 44100,
                 stereo: bool = False, num_stems: int = 1, time_transformer_depth: int = 2,
                 freq_transformer_depth: int = 2, linear_transformer_depth: int = 0,
                 dim_head: int = 64, heads: int = 8, stft_n_fft: int = 2048,
                 stft_hop_length: int = 512, stft_win_length: int = 2048,
                 stft_normalized: bool = False, zero_dc: bool = True,
                 mask_estimator_depth: int = 1, mlp_expansion_factor: int = 4):
        membership = torch.from_numpy(mel_band_membership(sample_rate, stft_n_fft, num_bands))
        channels = 2 if stereo else 1
        super().__init__(
            dim=dim, depth=depth,
            widths=tuple(2 * channels * int(n) for n in membership.sum(dim=1)),
            stereo=stereo, num_stems=num_stems, time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            linear_transformer_depth=linear_transformer_depth, dim_head=dim_head, heads=heads,
            norm_output=True, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length, stft_normalized=stft_normalized, zero_dc=zero_dc,
            mask_hidden_layers=mask_estimator_depth, mlp_expansion_factor=mlp_expansion_factor)
        bins = membership.nonzero()[:, 1]  # band by band, ascending within a band
        rows = (bins[:, None] * channels + torch.arange(channels)).flatten()
        self.register_buffer("rows", rows, persistent=False)  # into [bins * channels]
        bands_per_row = membership.sum(dim=0).repeat_interleave(channels)
        self.register_buffer("bands_per_row", bands_per_row.float(), persistent=False)

    def band_input(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The rows of every band, band after band: `[batch, frames, rows * 2]`."""
        return spectrum[:, self.rows].transpose(1, 2).flatten(2)

    def frequency_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Each row's mask: the mean of its bands' masks."""
        masks = torch.view_as_complex(masks.contiguous())
        batch, stems, _, frames = masks.shape
        summed = masks.new_zeros(batch, stems, len(self.bands_per_row), frames)
        summed.index_add_(2, self.rows, masks)
        return summed / self.bands_per_row.clamp(min=1e-8)[:, None]


def mel_band_membership(samplerate: int, n_fft: int, bands: int) -> np.ndarray:
    """`[bands, n_fft // 2 + 1]` booleans: where each of librosa's Slaney mel filters (its
    `filters.mel` defaults, float32) is non-zero, with the first bin in the first band and the
    last in the last, as the mel-band RoFormer chose them."""
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / samplerate)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(samplerate / 2.0), bands + 2))
    widths = np.diff(edges)
    distances = np.subtract.outer(edges, bins)
    weights = np.zeros((bands, len(bins)), dtype=np.float32)
    for band in range(bands):
        rising, falling = -distances[band] / widths[band], distances[band + 2] / widths[band + 1]
        weights[band] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:bands + 2] - edges[:bands]))[:, None]
    membership = weights > 0
    membership[0, 0] = membership[-1, -1] = True
    if not membership.any(axis=0).all():
        raise ValueError(f"num_bands {bands} leaves some of the {len(bins)} STFT bins in no band")
    return membership


F_SP, MIN_LOG_HZ, LOG_STEP = 200.0 / 3, 1000.0, np.log(6.4) / 27.0  # Slaney's mel scale


def hz_to_mel(hz: float) -> float:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    if hz < MIN_LOG_HZ:
        return hz / F_SP
    return MIN_LOG_HZ / F_SP + np.log(hz / MIN_LOG_HZ) / LOG_STEP


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """The inverse of `hz_to_mel`, for an array."""
    hz = F_SP * mels
    log_part = mels >= MIN_LOG_HZ / F_SP
    hz[log_part] = MIN_LOG_HZ * np.exp(LOG_STEP * (mels[log_part] - MIN_LOG_HZ / F_SP))
    return hz
