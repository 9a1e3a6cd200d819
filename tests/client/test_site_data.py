"""client/site_data.py: a site's own token-tagged file in a NER run is read with the run's tags."""

import numpy as np
import pytest

from client.site_data import load_site_data
from common.config import ConfigError, RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.data.site_file import write_site_file


def test_a_conll_site_file_gets_the_runs_tag_set_and_a_foreign_one_is_refused(tmp_path):
    settings = RunSettings(dataset="wnut16-ner", model="text")
    pool = load_dataset("wnut16-ner")[0]
    mine = pool.subset(np.arange(40))
    write_site_file(mine, tmp_path / "tweets.conll")
    site = SiteSettings(name="clinic", data_file=str(tmp_path / "tweets.conll"))
    data = load_site_data(settings, site, 0, 1)
    assert data.train.class_names == pool.class_names
    assert len(data.train) + len(data.validation) == 40
    assert sorted(data.train.tokens + data.validation.tokens) == sorted(mine.tokens)

    (tmp_path / "other.conll").write_text("Ann\tB-person\n\nok\tO\n")
    other = SiteSettings(data_file=str(tmp_path / "other.conll"), class_names="O,B-person,I-person")
    with pytest.raises(ConfigError, match="has 3 classes"):
        load_site_data(settings, other, 0, 1)
