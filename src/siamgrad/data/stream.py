"""The former home of streaming, kept only for callers not yet on :func:`siamgrad.data.sets.load_data`.

train/loop.py and eval/knn.py import these names from here; delete this module once they call
``load_data`` (see :mod:`siamgrad.data` for where everything lives now).
"""

from siamgrad.data.datasets import IMAGEFOLDER_DEFAULT_SIZE
from siamgrad.data.sets import dataset_channel_stats, load_train_set, make_batches, should_stream
from siamgrad.data.sets import load_eval_sets as stream_eval_sets

__all__ = ["IMAGEFOLDER_DEFAULT_SIZE", "dataset_channel_stats", "load_train_set", "make_batches",
           "should_stream", "stream_eval_sets"]
