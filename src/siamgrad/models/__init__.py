"""Networks: backbones (:mod:`.backbones`), projector and predictor heads (:mod:`.heads`), and the
batch-norm variants the reference implementations imply (per-view statistics, MoCo's shuffle)."""
