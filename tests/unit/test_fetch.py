"""fetch copies stems to a local directory only (refused before any service is asked)."""
from __future__ import annotations

import pytest

from raydemucs.core.errors import InvalidInput

from support import run_cli


def test_stems_are_fetched_to_a_local_directory_only(audio, tmp_path):
    from raydemucs import WorkerManager

    with pytest.raises(InvalidInput, match="local directory"):
        WorkerManager().fetch("anytask", "s3://bucket/stems")
    refused = run_cli("submit", audio("song.wav", seconds=0.5), "--upload", "-o", "s3://bucket/x")
    assert refused.returncode == 2 and "-o names the local directory" in refused.stderr

