"""`engram-ff bench update --compare`: a setting the update would refuse stops the bench before any update runs."""

import pytest

from engram_ff.bench.update import check_setting, parse_setting


def test_a_setting_is_key_value_pairs():
    assert parse_setting("model_preset=large, workers=1") == {"model_preset": "large", "workers": "1"}
    for bad in ("", "large", "workers=", "=1"):
        with pytest.raises(SystemExit, match="expected key=value"):
            parse_setting(bad)


def test_a_setting_the_update_refuses_is_named_before_any_update():
    check_setting("model_preset=large,batch_size=64")
    with pytest.raises(SystemExit, match="nokey.*unknown key"):
        check_setting("nokey=1")
    with pytest.raises(SystemExit, match="workers: 3 ranks cannot share batch_size = 16"):
        check_setting("workers=3")
