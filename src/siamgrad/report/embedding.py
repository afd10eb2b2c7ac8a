"""A 2-D picture of the learned features: t-SNE of the test split's features, coloured by class.

Computed when a run is analyzed, from its checkpoint (``latest.pt``, else ``best.pt``): at most
:data:`MAX_POINTS` test images (a seeded random subset), the backbone's features in eval mode,
l2-normalized (the geometry kNN uses), reduced to 50 dimensions by PCA when wider, then
scikit-learn's t-SNE (perplexity 30, PCA initialization, ``random_state = seed``). The result
is cached in ``report/embedding.json`` and recomputed only when the checkpoint changes.

t-SNE keeps neighbourhoods, not distances: tight, separated class clusters mean that nearby
features share a class (what kNN rewards); the sizes of clusters and the gaps between them carry
little meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from siamgrad.checkpoint import atomic_write_json

MAX_POINTS = 2000
PCA_DIMS = 50
PERPLEXITY = 30.0


def _checkpoint(run_dir: Path) -> Path | None:
    for name in ("latest.pt", "best.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def compute_embedding(run_dir: str | Path, cache_dir: str | Path | None = None, *, max_points: int = MAX_POINTS,
                      seed: int = 0, given: tuple | None = None) -> dict[str, Any]:
    """``{"xy", "labels", "classes", "step", "points", "total", ...}``, or ``{"error": why}``.

    ``xy``: one ``[x, y]`` per shown test image; ``labels``: their class indices; ``total``: the
    size of the test split. Cached in ``cache_dir/embedding.json`` (default ``run_dir/report``).
    ``given``: ``(features, labels, classes)`` of the whole test split, already computed from the
    checkpoint's backbone (the trainer's), instead of loading the checkpoint and the data.
    """
    run_dir = Path(run_dir)
    ckpt = _checkpoint(run_dir)
    if ckpt is None:
        return {"error": "no checkpoint (latest.pt or best.pt) in the run folder"}
    cache = Path(cache_dir if cache_dir is not None else run_dir / "report") / "embedding.json"
    st = ckpt.stat()
    key = {"checkpoint": ckpt.name, "mtime_ns": st.st_mtime_ns, "bytes": st.st_size, "max_points": max_points,
           "seed": seed}
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return saved
        except (json.JSONDecodeError, OSError):
            pass
    import numpy as np
    import torch

    from siamgrad.config import from_dict
    from siamgrad.errors import SiamgradError
    from siamgrad.eval.checkpoint import labeled_sets
    from siamgrad.eval.features import extract_features, load_backbone

    if given is None:
        try:
            backbone, state = load_backbone(str(ckpt))
            cfg = from_dict(state["config"])
            _, test, size = labeled_sets(cfg, state)
        except SiamgradError as e:
            return {"error": str(e)}
        labels, classes, n = test.labels, list(test.classes), len(test)
    else:
        import yaml

        features, labels, classes = given
        n = len(labels)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        data = saved.get("data") or {}
        step = json.loads((run_dir / "results.json").read_text()).get("step", 0) if (run_dir / "results.json").is_file() else 0
    idx = torch.arange(n)
    if n > max_points:
        idx = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]).values
    if given is None:
        feats = extract_features(backbone, test.images[idx], tuple(state["mean"]), tuple(state["std"]), size=size)
        dataset, split, step = cfg.data.name, cfg.data.test_split, int(state.get("step", 0))
    else:
        feats = features[idx].float()
        dataset, split = data.get("name"), data.get("test_split", "test")
    x = torch.nn.functional.normalize(feats, dim=1).numpy().astype(np.float64)
    xy = tsne_2d(x, seed)
    out = {"key": key, "xy": np.round(xy, 4).tolist(), "labels": labels[idx].tolist(),
           "classes": list(classes), "step": int(step), "points": int(len(idx)),
           "total": n, "dataset": dataset, "split": split, "seed": seed}
    try:
        atomic_write_json(cache, out)
    except OSError:  # a read-only run folder: the picture is still drawn
        pass
    return out


def tsne_2d(x, seed: int = 0):
    """t-SNE coordinates ``[N, 2]`` of the rows of ``x`` (PCA to 50 dimensions first when wider)."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 3:
        return np.zeros((n, 2))
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(PERPLEXITY, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def draw_embedding(ax, emb: dict[str, Any], title: str, legend: bool = True) -> None:
    """Scatter ``emb`` on ``ax`` coloured by class; a note instead when it holds an ``error``."""
    import matplotlib

    if emb.get("error"):
        ax.set_title(title)
        ax.text(0.5, 0.5, "no embedding:\n" + _wrap(emb["error"], 60), ha="center", va="center",
                transform=ax.transAxes, color="0.35", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    import numpy as np

    xy = np.asarray(emb["xy"], dtype=float).reshape(-1, 2)
    labels = np.asarray(emb["labels"], dtype=int)
    classes = emb.get("classes") or [str(c) for c in sorted(set(labels.tolist()))]
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    for c in range(len(classes)):
        m = labels == c
        if m.any():
            color = cmap(c % 20) if len(classes) <= 20 else cmap(c / max(1, len(classes) - 1))
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=color, alpha=0.8, lw=0, label=str(classes[c]))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"t-SNE of {emb['points']} of {emb['total']} {emb.get('split', 'test')} images, "
                  f"step {emb['step']}", fontsize=8)
    if legend and len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:6])
