import pytest

import talkcodec
from talkcodec.errors import TalkcodecError, UnknownCodecError


def test_codec_ids_are_frozen():
    # Changing these breaks every stream ever written: never edit, only append.
    assert talkcodec.CODEC_IDS == {"mesh": 1, "avfr": 2, "apb": 3}


def test_list_and_get():
    assert "mesh" in talkcodec.list_codecs()
    codec = talkcodec.get_codec("mesh", precision=2.0)
    assert codec.name == "mesh" and codec.codec_id == 1 and codec.settings.precision == 2.0


def test_unknown_codec_names_the_available_ones():
    with pytest.raises(UnknownCodecError, match="available: apb, avfr, mesh"):
        talkcodec.get_codec("h265")


@pytest.mark.parametrize(
    "settings, message",
    [({"bogus": 1}, "valid settings"), ({"coefficients": 99}, "coefficients must be an integer in 1..32"),
     ({"precision": "abc"}, "precision must be a number"), ({"precision": float("nan")}, "precision"),
     ({"key_interval": 2.5}, "an integer"), ({"crop": "yes"}, "true or false"), ({"crop": 1}, "true or false"),
     ({"reference_format": "png"}, "one of webp, jpeg"), ({"model": 3}, "model must be a text"),
     ({"frames_per_packet": None}, "frames_per_packet")],
)  # fmt: skip
def test_bad_settings_are_explained(settings, message):
    with pytest.raises(TalkcodecError, match=message):
        talkcodec.get_codec("mesh", **settings)


@pytest.mark.parametrize("name", ["mesh", "avfr", "apb"])
def test_every_setting_is_declared_with_help_and_a_range(name):
    from talkcodec.registry import codec_class
    from talkcodec.settings import unchecked_settings

    assert unchecked_settings(codec_class(name).Settings) == []


def test_settings_take_ints_for_numbers_and_keep_their_types():
    settings = talkcodec.get_codec("mesh", precision=2, frames_per_packet=4).settings
    assert settings.precision == 2.0 and isinstance(settings.precision, float) and settings.frames_per_packet == 4
