"""Fixed-seed CPU runs end with exactly these weights.

The digests were recorded before the package moved into folders by capability; a reorganization
must keep them bit for bit. A deliberate change of a default or of the numerics of a step changes
them too: then re-record them (``python tests/test_fingerprint.py``) in the commit that makes the
change, and say so in its message.

Bit-exact results depend on the CPU's kernels (AVX2 and AVX512 builds of the same fp32 step round
differently), so each run keeps the digest of every kind of CPU it was recorded on; a digest that
matches none of them is a change of numerics (or a new kind of CPU: record it beside the others,
from a commit whose digests match on a known one).
"""

import hashlib
import sys

import pytest
import torch

from siamgrad.config import build_config

# Each run pins the behaviour its digest was recorded with where a default changed since: joint
# batch-norm statistics over the views (view_bn), and per method the old MoCo key encoder (no
# shuffled batch norm, m 0.99 on the cosine schedule), DirectPred's fixed predictor and affine
# hidden batch norm on the cosine schedule, and VICReg's bias in the projector's last layer.
_PINNED = ["method.view_bn=joint"]
RUNS = {
    "unigrad": [*_PINNED],
    "moco": ["method=moco", "method.queue_size=256", *_PINNED, "method.shuffle_bn=false", "method.momentum=0.99",
             "method.momentum_schedule=cosine"],
    "directpred": ["method=directpred", *_PINNED, "method.predictor_update=fixed", "method.proj_hidden_bn_affine=true",
                   "method.momentum_schedule=cosine"],
    "vicreg-gradient": ["method=vicreg", "method.form=gradient", "method.target=momentum", *_PINNED,
                        "method.proj_last_bias=true"],
    "barlow_twins": ["method=barlow_twins", "augment.n_views=3", *_PINNED],
}

# name -> the digests recorded so far, one per kind of CPU (the first on an earlier machine, the
# second on an AMD EPYC with AVX512-BF16, from a commit whose first digests matched on the first;
# the third, where a run has one, on an Intel Xeon with AVX512-BF16, from a commit whose digests
# matched on the AMD one; there unigrad and vicreg-gradient end as on an earlier kind)
DIGESTS = {
    "barlow_twins": ("efa1780e9e59e01fd137918eeedb02a4a4d492414bc390925370d21de7536043",
                     "70bf701eea699cf6bed18c0457c829711c0cf16c5f3fc5018202b7fcf74b9311",
                     "7f7c768e224025ac220029b982232030d0c22271c030bfb92b97a54b748f648a"),
    "directpred": ("6bec5a4f6621fdcc7d91b71f54df31e4c202f736c4f0a6f9012baa78a11eeb8f",
                   "b76fcd3046f55665bcd1177b956e83b4d6387d0ead44e016715ae083cbace75b",
                   "62beb5c895f6f9b3e5e17af2054f2272852f19d210ba2819a005ee2ee1dc99c4"),
    "moco": ("48fe707ca3189c03a69e2851b808c1d74d06c95a99f6ff354311e65fdf1c6b94",
             "e3f9d68d7b8f7f6801ff62d82a3b367c8c46627f3da7c7a1124375c4870e7135",
             "c1f2b0e79adbb65ab85bcaf3913f25622169b5c088c56a4dc718c79e67a684d3"),
    "unigrad": ("78cfb69aba73eab83012ed835e1280d18883c0807b05654e02e6380c6ade3561",
                "e418fc2096c25ef5a75ad5d06fdc45ee68b0c82151e21f1bf0897a86e4a44dae"),
    "vicreg-gradient": ("506cba8d4279ec08745dbed12c25f66d882282a17bf57095259b1c28cf957812",
                        "e8d0d4029d54539b979429a603250850cb4983353911f927ff6fbf7eb0bf1912"),
}


def weights_digest(tmp_path, name: str) -> str:
    from siamgrad.train.loop import train

    cfg = build_config(["backbone=tiny", "batch_size=64", "epochs=1", "method.proj_hidden_dim=32",
                        "method.proj_output_dim=16", "eval.knn_k=20", "progress=false", "threads=1",
                        "diag.report=false", "seed=3", f"out_dir={tmp_path}", f"run_name={name}",
                        *RUNS[name]])
    result = train(cfg, log=False)
    state = torch.load(result.run_dir / "latest.pt", weights_only=True)["method"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixed_seed_run_ends_with_recorded_weights(tmp_path, name):
    assert weights_digest(tmp_path, name) in DIGESTS[name]


if __name__ == "__main__":  # print the digests to record
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        for name in sorted(RUNS):
            print(f'    "{name}": "{weights_digest(Path(d), name)}",', file=sys.stdout, flush=True)
