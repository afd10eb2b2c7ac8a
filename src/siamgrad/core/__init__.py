"""The maths: the unified gradient and every family's objective as pure functions of features.

* :mod:`.gradient`   -- the unified form ``c (-u2^m + lam sum_v s_v v)``, the surrogate loss,
  l2-normalization, float32 islands, view pairs, the batch correlation matrix
* :mod:`.objectives` -- contrastive, asymmetric, decorrelation and UniGrad losses and gradients

Nothing here holds state or has side effects; method state lives in :mod:`siamgrad.methods`.
"""
