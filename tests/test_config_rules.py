"""The config's rules one by one, as a user meets them: every refused value names its key and the rule,
every accepted spelling is accepted, and a config written out reads back as the same config."""
import pytest

from fastdcgan import config
from fastdcgan.config import UsageError


def test_a_wrongly_typed_value_in_a_file_names_the_file_once_and_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train]\nepochs = 1.5\n")
    with pytest.raises(UsageError) as e:
        config.build(str(f))
    assert str(e.value) == f"{f}: bad value for train.epochs: 1.5 (expected int)"
