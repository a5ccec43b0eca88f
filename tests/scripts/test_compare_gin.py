"""scripts/compare_gin.py trains graphformer as GIN is trained: the same
inputs and loop, only the message passing differs."""
from graphformer.train import prepare
from tests.helpers import load_script


def test_graphformer_gets_nothing_gin_does_not(tmp_path):
    """graphformer started from the shipped pre-trained trunk and read RDKit
    descriptors, which GIN reads neither of."""
    gin = load_script("compare_gin")
    cfg = gin.run_config("freesolv", epochs=1, seed=3, threads=1)
    assert cfg.train.pretrained is False and cfg.train.init is None
    assert cfg.train.kernel_member == "none" and cfg.train.ensemble == 1
    assert cfg.data.molecule_features == [] and cfg.data.split == "scaffold"
    cfg.data.root = str(tmp_path)
    assert list(prepare(cfg, log=False).bench.feature_names) == []
