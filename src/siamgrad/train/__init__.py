"""Pretraining: the loop (:mod:`.loop`) and its parts.

* :mod:`.loop`       -- :class:`Trainer` (:meth:`Trainer.fit` reads top to bottom) and :func:`train`
* :mod:`.run_folder` -- the run's folder: resume, checkpoints, config and results
* :mod:`.evaluator`  -- kNN during training, the baselines, the best accuracy
* :mod:`.probe`      -- the online linear probe
* :mod:`.optim`      -- optimizers (SGD, LARS, AdamW) and the warmup + cosine schedule
* :mod:`.metrics`    -- JSON lines and TensorBoard sinks
* :mod:`.progress`   -- the progress line
"""

from siamgrad.train.loop import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
