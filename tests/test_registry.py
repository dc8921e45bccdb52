import pytest

from stmixer.utils.registry import Registry


def test_register_several_names_and_unknown_name_lists_choices():
    reg = Registry("backbone", config_key="MODEL.BACKBONE.CONV_BODY")

    @reg.register("A-50", "A-101")
    def build(cfg):
        return cfg * 2

    assert reg.get("A-101")(3) == 6 and "A-50" in reg
    with pytest.raises(KeyError, match=r"MODEL.BACKBONE.CONV_BODY = 'B'.*A-101, A-50"):
        reg.get("B")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("A-50")(build)
