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


@pytest.mark.parametrize("settings, message", [({"bogus": 1}, "valid settings"), ({"coefficients": 99}, "coefficients")])
def test_bad_settings_are_explained(settings, message):
    with pytest.raises(TalkcodecError, match=message):
        talkcodec.get_codec("mesh", **settings)
