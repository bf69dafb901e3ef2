import pytest

from mghash_tf.core.layout import PRESETS, CodeLayout, Segment, get_layout


def test_mg64_prefix_and_levels():
    layout = get_layout("mg64")
    assert layout.bits == 64
    assert layout.slice("coarse") == slice(0, 16)
    assert layout.slice("fine") == slice(16, 64)
    assert layout.segment("coarse").label_level == "coarse"


def test_scales_segments_read_one_stage_each():
    layout = get_layout("scales")
    assert [s.stages for s in layout.segments] == [("low",), ("mid",), ("high",), ("low", "mid", "high")]
    assert layout.slice("mid") == slice(16, 32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name):
    layout = get_layout(name)
    assert CodeLayout.from_json(layout.to_json()) == layout
    assert layout.bits % 8 == 0


@pytest.mark.parametrize("spec,bits", [(16, 16), ("plain32", 32), ("plain24", 24)])
def test_plain_codes(spec, bits):
    layout = get_layout(spec)
    assert layout.bits == bits and layout.names == ("code",)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "a", "bits": 12}, "multiple of 8. Received: bits=12"),
        ({"name": "a", "bits": 8, "stages": ("top",)}, "stages"),
        ({"name": "a", "bits": 8, "label_level": "medium"}, "label_level"),
        ({"name": "a b", "bits": 8}, "identifier"),
    ],
)
def test_segment_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Segment(**kwargs)


def test_layout_rejects_duplicates_and_unknown():
    with pytest.raises(ValueError, match="unique"):
        CodeLayout(({"name": "a", "bits": 8}, {"name": "a", "bits": 8}))
    with pytest.raises(ValueError, match="Unknown segment"):
        get_layout("mg64").slice("medium")
    with pytest.raises(ValueError, match="preset"):
        get_layout("mg65")
