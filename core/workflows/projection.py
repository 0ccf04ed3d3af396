"""Latent projections of a cohort: where each subject sits in the model's latent space, in 2D.

Every subject is encoded to its posterior mean ``E[z | x_S]`` twice over:

* from **all its observed modalities** (``S`` = the subject's missingness pattern), the *joint* view;
* from **each modality alone** (``S = {m}``, subjects that have ``m``), one view per modality.

All views are projected into **one shared 2D space**, so a subject's points can be compared across
views: if the modalities agree, a subject lands in the same place whichever modality it was encoded
from. With PCA (the default, deterministic) the axes are fitted on the joint codes and every view is
projected onto them; t-SNE (scikit-learn) and UMAP (only if the ``umap-learn`` package is importable)
cannot project new points, so they embed the joint and single-modality codes together. Codes wider
than 50 dimensions are first reduced to 50 with PCA for t-SNE and UMAP.

The agreement of a modality is also measured in the latent space itself (not in 2D): the fraction of
subjects whose code from ``m`` alone has their own joint code as nearest neighbour among all joint
codes (``retrieval``, chance is 1/n), and the mean distance between the two codes relative to the
spread of the joint codes (``relative_distance``).

Large cohorts are subsampled to ``max_points`` subjects, stratified by missingness pattern (every
pattern keeps its share, and at least one subject), so a rare pattern never disappears; the result
says "n of N". Colour data travel with the projection: the missingness pattern of each subject (from
the dataset's masks), the run's split (train/validation/test) when known, and every covariate of the
cohort (``participants.tsv`` columns, the dataset's labels).

Results are cached per run in ``<run>/projections/<key>.npz`` (arrays, ``allow_pickle=False``) and
``<key>.json`` (names and settings); the key hashes the method, its settings, the model's weights file
and the data, so a resumed run or another cohort gets a new projection.

Example:
    >>> from core.workflows.projection import project_cohort              # doctest: +SKIP
    >>> p = project_cohort(model, dataset, method="pca")        # doctest: +SKIP
    >>> p.views["joint"].shape, p.caption()                     # doctest: +SKIP
    ((40, 2), 'showing 40 of 40 subjects')
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.nn.base import evaluation_mode
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

__all__ = [
    "METHODS",
    "JOINT",
    "ColourColumn",
    "Projection",
    "ProjectionError",
    "available_methods",
    "colour_columns",
    "missingness_patterns",
    "stratified_subsample",
    "encode_views",
    "project_cohort",
    "project_run",
    "projection_key",
    "load_cached",
]

METHODS = ("pca", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
JOINT = "joint"


class ProjectionError(ValueError):
    """The projection cannot be computed as asked (unknown method, UMAP not installed, nothing to encode)."""


def available_methods() -> list[str]:
    """The projection methods usable here: PCA and t-SNE always, UMAP when ``umap`` can be imported."""
    methods = ["pca", "tsne"]
    if importlib.util.find_spec("umap") is not None:
        methods.append("umap")
    return methods


# ---------------------------------------------------------------------------------------------- colours
@dataclass
class ColourColumn:
    """Per-subject values to colour points by.

    ``kind`` is ``"categorical"`` (``values`` are category indices into ``categories``, -1 for unknown)
    or ``"continuous"`` (float ``values``, NaN for unknown).
    """

    name: str
    kind: str
    values: np.ndarray
    categories: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """A readable label per subject."""
        if self.kind == "categorical":
            return [self.categories[int(v)] if 0 <= int(v) < len(self.categories) else "n/a" for v in self.values]
        return ["n/a" if not np.isfinite(v) else f"{v:.4g}" for v in self.values]

    def take(self, index: np.ndarray) -> ColourColumn:
        return ColourColumn(self.name, self.kind, self.values[index], list(self.categories))


def missingness_patterns(masks: np.ndarray, modalities: Sequence[str]) -> list[str]:
    """``"T1+T2"`` per subject from a ``(n, M)`` bool matrix of observed modalities."""
    return ["+".join(m for m, on in zip(modalities, row, strict=True) if on) or "none" for row in np.asarray(masks, bool)]


def _categorical(name: str, labels: Sequence[str], order: Sequence[str] | None = None) -> ColourColumn:
    categories = list(order) if order is not None else sorted(set(labels))
    index = {c: i for i, c in enumerate(categories)}
    return ColourColumn(name, "categorical", np.array([index.get(v, -1) for v in labels], dtype=np.int64), categories)


def colour_columns(
    dataset: Any,
    modalities: Sequence[str] | None = None,
    label_categories: Mapping[str, Sequence[str]] | None = None,
    split: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, ColourColumn]:
    """Everything a projection can be coloured by, one value per subject of ``dataset``.

    * ``"missingness"``: the subject's pattern of observed modalities (from ``dataset.masks``);
    * ``"split"``: train / validation / test (``split`` maps those names to subject ids), else absent;
    * one column per covariate in ``dataset.labels`` (the cohort's ``participants.tsv``): category names
      from ``label_categories`` (:attr:`CohortRecords.label_categories`); numbers with at most 8 distinct
      integer values are categories too, other numbers are continuous.
    """
    modalities = list(modalities or dataset.modalities)
    ids = list(dataset.ids)
    masks = np.stack([np.asarray(dataset.masks[m], bool) for m in modalities], axis=1)
    patterns = missingness_patterns(masks, modalities)
    order = sorted(set(patterns), key=lambda p: (-p.count("+"), p))  # complete first, then fewer modalities
    columns = {"missingness": _categorical("missingness", patterns, order)}
    if split:
        where = {s: part for part, members in split.items() if isinstance(members, (list, tuple)) for s in members}
        parts = [where.get(s, "not in the run's split") for s in ids]
        known = [p for p in ("train", "validation", "test") if p in parts] + sorted({p for p in parts} - {"train", "validation", "test"})
        columns["split"] = _categorical("split", parts, known)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1:
        labels = {"label": labels}
    for name, values in (labels or {}).items() if isinstance(labels, Mapping) else ():
        tensor = torch.as_tensor(values)
        if tensor.dim() != 1 or tensor.shape[0] != len(ids):
            continue
        cats = list((label_categories or {}).get(name) or [])
        array = tensor.double().numpy()
        if cats:
            columns[name] = ColourColumn(name, "categorical", tensor.long().numpy(), cats)
            continue
        finite = array[np.isfinite(array)]
        distinct = np.unique(finite)
        if len(distinct) <= 8 and np.all(distinct == np.round(distinct)):
            text = ["n/a" if not np.isfinite(v) else f"{v:g}" for v in array]
            columns[name] = _categorical(name, text, [f"{v:g}" for v in distinct] + (["n/a"] if "n/a" in text else []))
        else:
            columns[name] = ColourColumn(name, "continuous", array.astype(np.float64))
    return columns


# ---------------------------------------------------------------------------------------------- the result
@dataclass
class Projection:
    """A 2D projection of a cohort's latent codes (see the module docstring).

    ``views[JOINT]`` and ``views[m]`` are ``(n, 2)`` arrays over the shown ``subjects`` (NaN rows where a
    subject lacks ``m``); ``masks`` is ``(n, M)`` (which modalities each shown subject has);
    ``n_total`` the number of subjects in the cohort; ``agreement[m]`` the latent-space agreement of
    modality ``m`` with the joint codes.
    """

    method: str
    subjects: list[str]
    n_total: int
    modalities: list[str]
    masks: np.ndarray
    views: dict[str, np.ndarray]
    colours: dict[str, ColourColumn]
    agreement: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    created: str = ""
    from_cache: bool = False

    @property
    def n_shown(self) -> int:
        return len(self.subjects)

    @property
    def subsampled(self) -> bool:
        return self.n_shown < self.n_total

    def caption(self) -> str:
        """``"showing n of N subjects"`` (honest about subsampling)."""
        extra = " (stratified by missingness pattern)" if self.subsampled else ""
        return f"showing {self.n_shown} of {self.n_total} subjects{extra}"

    def patterns(self) -> list[str]:
        return missingness_patterns(self.masks, self.modalities)

    def index_of(self, subject: str) -> int | None:
        try:
            return self.subjects.index(subject)
        except ValueError:
            return None

    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)


# ---------------------------------------------------------------------------------------------- subsampling
def stratified_subsample(patterns: Sequence[str], max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` items, each pattern keeping its share (at least one)."""
    n = len(patterns)
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patterns):
        groups.setdefault(p, []).append(i)
    keys = sorted(groups)
    if len(keys) >= max_points:  # more patterns than points: one per (largest) pattern
        keys = sorted(keys, key=lambda k: -len(groups[k]))[:max_points]
        return np.sort(np.array([rng.choice(groups[k]) for k in keys]))
    quota = {k: max(1, int(np.floor(max_points * len(groups[k]) / n))) for k in keys}
    spare = max_points - sum(quota.values())
    by_remainder = sorted(keys, key=lambda k: -(max_points * len(groups[k]) / n - np.floor(max_points * len(groups[k]) / n)))
    for k in by_remainder:
        if spare <= 0:
            break
        if quota[k] < len(groups[k]):
            quota[k] += 1
            spare -= 1
    chosen = [i for k in keys for i in rng.choice(groups[k], size=min(quota[k], len(groups[k])), replace=False)]
    return np.sort(np.array(chosen, dtype=int))


# ---------------------------------------------------------------------------------------------- encoding
def _batch(dataset: Any, indices: Sequence[int]) -> Any:
    from core.data.dataset import batches_of

    return next(batches_of(dataset, list(indices), len(indices)))[1]


@torch.no_grad()
def encode_views(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Posterior means of the subjects ``indices``: ``(joint (n, D), {m: (n, D) with NaN rows}, masks (n, M))``.

    The joint code of a subject is encoded from exactly its observed modalities (subjects are grouped
    by missingness pattern, one ``encode`` call per group and batch).
    """
    indices = list(indices)
    modalities = list(model.modalities)
    masks = np.stack([np.asarray(dataset.masks[m], bool)[indices] for m in modalities], axis=1)
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, observed in enumerate(masks):
        pattern = tuple(m for m, on in zip(modalities, observed, strict=True) if on)
        if pattern:
            groups.setdefault(pattern, []).append(row)
    plan: list[tuple[tuple[str, ...], list[int], str]] = []
    for pattern, rows in groups.items():
        plan += [(pattern, rows[k : k + batch_size], JOINT) for k in range(0, len(rows), batch_size)]
    for j, m in enumerate(modalities):
        rows = [r for r in range(len(indices)) if masks[r, j]]
        plan += [((m,), rows[k : k + batch_size], m) for k in range(0, len(rows), batch_size)]
    joint: np.ndarray | None = None
    single: dict[str, np.ndarray] = {}
    with evaluation_mode(model):
        for step, (cond, rows, view) in enumerate(plan):
            raise_if_cancelled(cancel, "latent projection")
            batch = _batch(dataset, [indices[r] for r in rows])
            z = model.encode(batch, cond_mod=list(cond), N=1, return_mean=True).z
            codes = z.detach().cpu().double().reshape(z.shape[0], -1).numpy()
            if joint is None:
                joint = np.full((len(indices), codes.shape[1]), np.nan)
            target = joint if view == JOINT else single.setdefault(view, np.full((len(indices), codes.shape[1]), np.nan))
            target[rows] = codes
            report_progress(progress, step + 1, len(plan) + 1, f"encoding from {'+'.join(cond)}")
    if joint is None:
        raise ProjectionError("No subject has an observed modality; there is nothing to encode.")
    for m in modalities:
        single.setdefault(m, np.full_like(joint, np.nan))
    return joint, single, masks


def _agreement(joint: np.ndarray, single: np.ndarray) -> dict[str, float]:
    rows = np.flatnonzero(np.isfinite(single).all(1) & np.isfinite(joint).all(1))
    if len(rows) == 0:
        return {"retrieval": float("nan"), "relative_distance": float("nan"), "n": 0}
    valid = np.flatnonzero(np.isfinite(joint).all(1))
    ref = joint[valid]
    a = single[rows]
    distances = (a**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2.0 * a @ ref.T  # (rows, subjects), no (n, n, D) array
    nearest = valid[np.argmin(distances, axis=1)]
    spread = float(np.sqrt(((ref - ref.mean(0)) ** 2).sum(1).mean())) or 1.0
    own = np.sqrt(((single[rows] - joint[rows]) ** 2).sum(1))
    return {"retrieval": float(np.mean(nearest == rows)), "relative_distance": float(own.mean() / spread), "n": int(len(rows))}


# ---------------------------------------------------------------------------------------------- 2D embedding
def _embed(method: str, joint: np.ndarray, single: dict[str, np.ndarray], seed: int, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA

    views = {JOINT: joint, **single}
    ok = {k: np.isfinite(v).all(1) for k, v in views.items()}
    out = {k: np.full((len(v), 2), np.nan) for k, v in views.items()}
    fit_rows = joint[ok[JOINT]]
    if len(fit_rows) == 0:
        raise ProjectionError("No subject could be encoded from its observed modalities.")
    if method == "pca":
        n_comp = min(2, fit_rows.shape[0], fit_rows.shape[1])
        pca = PCA(n_components=n_comp, random_state=seed).fit(fit_rows)
        for k, v in views.items():
            if ok[k].any():
                xy = pca.transform(v[ok[k]])
                out[k][ok[k], :n_comp] = xy
                out[k][ok[k], n_comp:] = 0.0
        return out
    stacked = np.concatenate([views[k][ok[k]] for k in views])
    if stacked.shape[1] > 50 and stacked.shape[0] > 50:
        stacked = PCA(n_components=50, random_state=seed).fit_transform(stacked)
    n = stacked.shape[0]
    if n < 4:
        raise ProjectionError(f"{METHOD_LABELS[method]} needs at least 4 codes; only {n} could be encoded. Use PCA.")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(params.get("perplexity", min(30.0, max(2.0, (n - 1) / 3.0))))
        xy = TSNE(n_components=2, perplexity=min(perplexity, n - 1.0), init="pca", random_state=seed,
                  learning_rate="auto").fit_transform(stacked)
    elif method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            raise ProjectionError("UMAP is not installed (pip install umap-learn); use PCA or t-SNE.") from None
        neighbours = int(params.get("n_neighbors", min(15, n - 1)))
        xy = umap.UMAP(n_components=2, n_neighbors=max(2, neighbours), random_state=seed).fit_transform(stacked)
    else:
        raise ProjectionError(f"Unknown projection method '{method}'; choose from {list(METHODS)}.")
    start = 0
    for k in views:
        count = int(ok[k].sum())
        out[k][ok[k]] = xy[start : start + count]
        start += count
    return out


def project_cohort(
    model: Any,
    dataset: Any,
    *,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    label_categories: Mapping[str, Sequence[str]] | None = None,
    split: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Projection:
    """Encode and project ``dataset``'s subjects with ``model`` (see the module docstring).

    Args:
        model: a :class:`~core.models.MultimodalVAE` (its modalities must be in ``dataset``).
        dataset: the cohort (in memory or an HDF5 cache).
        method: ``"pca"``, ``"tsne"`` or ``"umap"`` (:func:`available_methods`).
        max_points: subsample larger cohorts to this many subjects (stratified by missingness pattern).
        seed: seeds the subsample and the embedding.
        params: method settings (``perplexity`` for t-SNE, ``n_neighbors`` for UMAP).
        label_categories, split: colour data, see :func:`colour_columns`.
        progress, cancel: see :mod:`core.progress`.
    """
    if method not in METHODS:
        raise ProjectionError(f"Unknown projection method '{method}'; choose from {list(METHODS)}.")
    if method not in available_methods():
        raise ProjectionError(f"{METHOD_LABELS[method]} is not available here (the 'umap-learn' package is not installed); "
                              "use PCA or t-SNE.")
    lacking = [m for m in model.modalities if m not in dataset.masks]
    if lacking:
        raise ProjectionError(f"The data lacks the model's modalities {lacking}.")
    modalities = list(model.modalities)
    all_masks = np.stack([np.asarray(dataset.masks[m], bool) for m in modalities], axis=1)
    usable = np.flatnonzero(all_masks.any(1))
    if len(usable) == 0:
        raise ProjectionError("No subject has any of the model's modalities.")
    chosen = usable[stratified_subsample(missingness_patterns(all_masks[usable], modalities), max_points, seed)]
    joint, single, masks = encode_views(model, dataset, chosen, batch_size, progress, cancel)
    raise_if_cancelled(cancel, "latent projection")
    total_steps = len(modalities) + 2
    report_progress(progress, total_steps - 1, total_steps, f"{METHOD_LABELS[method]} embedding")
    views = _embed(method, joint, single, seed, dict(params or {}))
    agreement = {m: _agreement(joint, single[m]) for m in modalities}
    columns = {k: c.take(chosen) for k, c in colour_columns(dataset, modalities, label_categories, split).items()}
    report_progress(progress, total_steps, total_steps, "done")
    return Projection(
        method=method,
        subjects=[str(dataset.ids[i]) for i in chosen],
        n_total=int(len(usable)),
        modalities=modalities,
        masks=masks,
        views=views,
        colours=columns,
        agreement=agreement,
        settings={"method": method, "max_points": int(max_points), "seed": int(seed), "params": dict(params or {}),
                  "latent_dim": int(joint.shape[1])},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


# ---------------------------------------------------------------------------------------------- cache
def _file_signature(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path.name}:missing"


def _data_signature(dataset: Any) -> str:
    h = hashlib.sha1()
    h.update(json.dumps(list(map(str, dataset.ids))).encode())
    for m in sorted(dataset.masks):
        h.update(m.encode())
        h.update(np.asarray(dataset.masks[m], bool).tobytes())
    data = getattr(dataset, "data", None)
    if isinstance(data, Mapping):
        for m in sorted(data):
            x = data[m]
            h.update(str(tuple(x.shape)).encode())
            flat = x.reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 100_000)].contiguous().numpy().tobytes())
    else:
        h.update(str(getattr(dataset, "path", type(dataset).__name__)).encode())
    return h.hexdigest()


def projection_key(run_dir: str | os.PathLike, dataset: Any, method: str, max_points: int, seed: int,
                   params: Mapping[str, Any] | None = None) -> str:
    """The cache key of a projection: method and settings, the run's weights file and the data."""
    run_dir = Path(run_dir)
    payload = {
        "version": 1,
        "method": method,
        "max_points": int(max_points),
        "seed": int(seed),
        "params": dict(sorted((params or {}).items())),
        "model": _file_signature(run_dir / "final_model" / "model.safetensors"),
        "data": _data_signature(dataset),
    }
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{method}-{digest}"


def _save(projection: Projection, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"masks": projection.masks.astype(bool)}
    for k, v in projection.views.items():
        arrays[f"view__{k}"] = np.asarray(v, dtype=np.float64)
    for k, c in projection.colours.items():
        arrays[f"colour__{k}"] = np.asarray(c.values)
    meta = {
        "method": projection.method,
        "subjects": projection.subjects,
        "n_total": projection.n_total,
        "modalities": projection.modalities,
        "views": list(projection.views),
        "colours": {k: {"kind": c.kind, "categories": c.categories} for k, c in projection.colours.items()},
        "agreement": projection.agreement,
        "settings": projection.settings,
        "created": projection.created,
    }
    tag = uuid.uuid4().hex[:8]
    npz_tmp = folder / f".{projection.key}.{tag}.npz"
    json_tmp = folder / f".{projection.key}.{tag}.json"
    try:
        with open(npz_tmp, "wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        json_tmp.write_text(json.dumps(meta, indent=1, allow_nan=True))
        os.replace(npz_tmp, folder / f"{projection.key}.npz")
        os.replace(json_tmp, folder / f"{projection.key}.json")  # written last: its presence marks a complete entry
    finally:
        npz_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)


def load_cached(folder: str | os.PathLike, key: str) -> Projection | None:
    """The cached projection ``key`` in ``folder`` (``<run>/projections``), or None."""
    folder = Path(folder)
    meta_path, npz_path = folder / f"{key}.json", folder / f"{key}.npz"
    if not (meta_path.is_file() and npz_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(npz_path, allow_pickle=False) as arrays:
            views = {k: arrays[f"view__{k}"] for k in meta["views"]}
            colours = {k: ColourColumn(k, v["kind"], arrays[f"colour__{k}"], list(v["categories"]))
                       for k, v in meta["colours"].items()}
            masks = arrays["masks"]
    except (OSError, ValueError, KeyError):
        return None
    return Projection(method=meta["method"], subjects=list(meta["subjects"]), n_total=int(meta["n_total"]),
                      modalities=list(meta["modalities"]), masks=masks, views=views, colours=colours,
                      agreement=meta["agreement"], settings=meta["settings"], key=key, created=meta.get("created", ""),
                      from_cache=True)


def project_run(
    run_dir: str | os.PathLike,
    loaded: Any = None,
    *,
    model: Any = None,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Projection:
    """The projection of a run's cohort by its final model, from ``<run>/projections`` when cached.

    ``loaded`` is the run's prepared data (:class:`~core.data.sources.LoadedData`); by default it is
    loaded from the run's ``config.yaml``. The run's ``split.json`` colours points by split.
    """
    run_dir = Path(run_dir)
    if loaded is None:
        from core.data.sources import load_data
        from core.workflows.runs import load_run_config

        loaded = load_data(load_run_config(run_dir / "config.yaml").data, progress=progress, cancel=cancel)
    dataset = getattr(loaded, "dataset", loaded)
    key = projection_key(run_dir, dataset, method, max_points, seed, params)
    folder = run_dir / "projections"
    if use_cache and (cached := load_cached(folder, key)) is not None:
        return cached
    if model is None:
        from core.models.base import load_bundle

        bundle = run_dir / "final_model"
        if not (bundle / "model_config.json").is_file():
            raise FileNotFoundError(f"{bundle} does not exist: the run has no final model yet (train or resume it first).")
        model = load_bundle(bundle, map_location=device)
    split = None
    if (run_dir / "split.json").is_file():
        split = {k: v for k, v in json.loads((run_dir / "split.json").read_text(encoding="utf-8")).items() if isinstance(v, list)}
    records = getattr(loaded, "records", None)
    categories = getattr(records, "label_categories", None)
    projection = project_cohort(model, dataset, method=method, max_points=max_points, seed=seed, params=params,
                                label_categories=categories, split=split, progress=progress, cancel=cancel)
    projection.key = key
    _save(projection, folder)
    return projection
