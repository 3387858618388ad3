"""Project names and file ids: what is accepted, what is refused, and a property for both."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raydemucs.core.errors import InvalidName
from raydemucs.core.names import check_name, name_from_filename


@pytest.mark.parametrize("name", ["My Project", "song_01", "a.b-c", "שיר", "曲", "Café del Mar",
                                  "x" * 128, "क़"])
def test_valid_names(name):
    assert check_name("project name", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden",
                                  "a..b", "nul\x00", "tab\there", "new\nline", "x" * 129,
                                  "a\u2215b", "a\u2044b", "a\uff0fb", " padded", "padded ",
                                  "semi;colon", "$HOME", "a:b", "\u202eevil"])
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        check_name("file id", name)


@given(st.text(max_size=200))
def test_a_name_is_accepted_only_if_it_is_one_safe_path_component(name):
    try:
        check_name("file id", name)
    except InvalidName as error:
        assert "\n" not in str(error)
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and ".." not in name and 0 < len(name) <= 128


@given(st.text(max_size=300))
def test_names_derived_from_file_names_are_always_valid(stem):
    assert check_name("file id", name_from_filename(stem))


def test_derived_names_keep_what_they_can():
    assert name_from_filename("My Song (live)") == "My Song _live_"
    assert name_from_filename("..") == "audio"
