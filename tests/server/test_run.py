"""server/run.py: a run refuses what its dataset cannot do before anything trains."""


def test_an_ner_run_refuses_the_audit_and_group_counts_before_anything_trains(tmp_path):
    import pytest

    from common.config import ConfigError, RunSettings
    from server.run import FederatedRun

    for extra in ({"audit": True}, {"sensitive_column": "sex"}):
        settings = RunSettings(
            dataset="wnut16-ner", model="text", results_dir=str(tmp_path), **extra
        )
        with pytest.raises(ConfigError, match="token-tagged"):
            FederatedRun(settings, "ner", run_id=1)
