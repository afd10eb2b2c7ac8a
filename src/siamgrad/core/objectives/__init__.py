"""Objectives of every family as pure functions of feature tensors.

* :mod:`.contrastive`   -- InfoNCE with batch negatives (SimCLR) or a queue (MoCo v2)
* :mod:`.asymmetric`    -- BYOL / SimSiam cosine losses, the DirectPred predictor
* :mod:`.decorrelation` -- Barlow Twins, VICReg and their multi-view forms
* :mod:`.unigrad`       -- UniGrad

Each family has its original loss and its unified-gradient form (a function returning the
chosen gradient ``g``, trained through :func:`siamgrad.core.gradient.surrogate_loss`).
"""

from siamgrad.core.objectives import asymmetric, contrastive, decorrelation, unigrad

__all__ = ["asymmetric", "contrastive", "decorrelation", "unigrad"]
