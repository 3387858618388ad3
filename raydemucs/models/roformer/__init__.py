"""The band-split and mel-band RoFormers: their checkpoints' YAML (`config`, no torch), the
networks and their loading (which import torch)."""
