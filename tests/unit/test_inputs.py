"""What a request may name as its input, without Ray: URIs under the allowed prefixes (whole
segments, no chains or tricks), paths under the allowed roots (real paths, never the service's
own folders), and the config's lists."""
from __future__ import annotations

import os

import pytest

from raydemucs.core.config import load_config
from raydemucs.core.errors import ConfigError, InvalidInput
from raydemucs.core.inputs import check_input, under_prefix

ALLOWED = ["s3://media", "gs://shared/songs/", "https://cdn.example.com/audio/"]


@pytest.mark.parametrize("uri", [
    "s3://media/a.wav", "s3://media/deep/er/My Song.mp3", "gs://shared/songs/x.flac",
    "https://cdn.example.com/audio/x.mp3", "HTTPS://CDN.example.com/audio/x.mp3",
])
def test_a_uri_under_an_allowed_prefix_is_accepted(uri):
    assert under_prefix(uri, ALLOWED)


@pytest.mark.parametrize("uri", [
    "s3://media-other/a.wav", "s3://media", "s3://media/", "s3://other/media/a.wav",
    "s3a://media/a.wav", "gs://shared/songsx/a.wav", "gs://shared/a.wav",
    "s3://media/../other/a.wav", "s3://media/./a.wav", "s3://media//a.wav",
    "s3://media/a%2e%2e/b.wav", "s3://media/%2E%2E%2Fx.wav", "s3://media/a%252e/b.wav",
    "s3://media/a.wav?versionId=1", "s3://media/a.wav#frag", "s3://media\\..\\x.wav",
    "simplecache::s3://media/a.wav", "zip://a.wav::s3://media/x.zip",
    "https://cdn.example.com@127.0.0.1/audio/x.mp3", "https://cdn.example.com:8080/audio/x",
    "zip://media/a.wav", "tar://media/a.wav", "memory://media/a.wav", "file:///media/a.wav",
    "ftp://media/a.wav", "dir://media/a.wav", "reference://media/a.wav", "s3://media/a\nb.wav",
])
def test_a_uri_outside_every_prefix_or_with_a_trick_is_refused(uri):
    assert not under_prefix(uri, ALLOWED)
    with pytest.raises(InvalidInput, match="not under a storage prefix"):
        check_input(uri, ALLOWED, [], [])


def test_a_whole_scheme_allows_every_bucket_of_it_and_nothing_else():
    assert under_prefix("s3://any/a.wav", ["s3://"])
    assert not under_prefix("gs://any/a.wav", ["s3://"]) and not under_prefix("s3://x", [])


@pytest.fixture
def tree(tmp_path):
    """A root holding a song and a symlink out of it; the service's state inside the root;
    a secret beside the root."""
    root, outside, state = tmp_path / "root", tmp_path / "outside", tmp_path / "root" / "state"
    for folder in (root / "songs", outside, state / "uploads"):
        folder.mkdir(parents=True)
    (root / "songs" / "a.wav").write_bytes(b"RIFF")
    (outside / "secret.wav").write_bytes(b"RIFF")
    (state / "uploads" / "theirs.wav").write_bytes(b"RIFF")
    os.symlink(outside / "secret.wav", root / "songs" / "link.wav")
    return root, outside, state


def test_a_path_under_a_root_is_accepted_and_its_escapes_are_refused(tree):
    root, outside, state = tree
    roots, private = [str(root)], [str(state)]
    assert check_input(str(root / "songs" / "a.wav"), [], roots, private)
    assert check_input(str(root / "songs" / "missing.wav"), [], roots, private)  # said later
    refused = [root / "songs" / "link.wav", state / "uploads" / "theirs.wav",
               outside / "secret.wav", outside / "missing.wav",
               f"{root}/songs/../../outside/secret.wav", f"{root}/../outside/missing.wav",
               f"{root}x/a.wav", "/etc/passwd"]
    messages = set()
    for path in refused:
        with pytest.raises(InvalidInput) as caught:
            check_input(str(path), [], roots, private)
        messages.add(str(caught.value).replace(str(path), "PATH"))
    assert messages == {"field 'input' PATH is not under a directory this service reads inputs "
                        "from (http.allow_paths)"}  # the same whether the path exists or not


def test_no_roots_no_paths(tree):
    root, _, _ = tree
    with pytest.raises(InvalidInput, match="http.allow_paths"):
        check_input(str(root / "songs" / "a.wav"), ["s3://"], [], [])


def test_the_config_lists_prefixes_and_roots_and_refuses_the_old_true():
    config = load_config(environ={"RAYDEMUCS_HTTP_INPUTS": "s3://media/, gs://shared",
                                  "RAYDEMUCS_HTTP_ALLOW_PATHS": "/mnt/a,/mnt/b"})
    assert config.http.inputs == ("s3://media/", "gs://shared")
    assert config.http.allow_paths == ("/mnt/a", "/mnt/b")
    assert load_config(overrides={"http": {"allow_paths": False}}).http.allow_paths == ()
    for http, words in [({"allow_paths": True}, "http.allow_paths takes the root directories"),
                        ({"allow_paths": ["songs"]}, "http.allow_paths[0]='songs'; allowed: "
                                                     "absolute directories"),
                        ({"inputs": ["zip://x"]}, "http.inputs[0]='zip://x'; allowed: a storage "
                                                  "prefix"),
                        ({"inputs": ["simplecache::s3://x"]}, "http.inputs[0]")]:
        with pytest.raises(ConfigError, match="^flags: ") as refused:
            load_config(overrides={"http": http})
        assert words in str(refused.value) and "\n" not in str(refused.value)
