"""Write synthesized (imputed) volumes back onto a subject's original grid, with provenance.

:func:`write_synthesized` takes a model output in preprocessed (model-grid) space and writes a NIfTI that
overlays the chosen source file exactly, in ITK-SNAP, 3D Slicer, FSL or nibabel:

* **geometry**: the model grid is resampled (linear) onto the source file's grid, which undoes the
  reorientation, resampling and crop/pad in one step. The file gets the source's shape and affine, with
  the qform and the sform both set to it and the source's codes (a missing code takes the other one; a
  qform/sform disagreement in the source resolves to the sform, as in preprocessing). Source voxels outside
  the model grid (cropped away before the model saw them) are 0. The file is read back with nibabel and
  SimpleITK and its shape and affine checked before it is renamed into place.
* **intensity** (``intensity=``): ``"source"`` inverts the normalisation (``x * scale + shift``) with the
  subject's own parameters for that modality, or the cohort's median parameters when the subject lacks the
  modality (:meth:`CohortRecords.intensity_reference`) or those given in ``intensity_params``. Percentile
  clipping cannot be undone. When the modality was normalised inside its foreground with the outside set to
  0, voxels outside the reference file's foreground are written as 0, as in the source. ``"normalized"``
  writes model units. ``"auto"`` is ``"source"`` when parameters exist, else ``"normalized"``; the sidecar
  and the ``intent_name`` field say which.
* **format**: float32, ``scl_slope``/``scl_inter`` 1/0, no NaN, the ``descrip`` field starting with
  ``SYNTHETIC``; a JSON sidecar (``<name>.json``) with ``"synthetic": true``, the model, run, conditioning
  modalities, number of samples, date, software version, source reference and intensity handling. An
  uncertainty map (voxel-wise std over the samples) can be written beside the mean (``<name>_std.nii.gz``).
* **field of view** (``field_of_view=``, :class:`core.workflows.impute.FieldOfView`): the volume and its uncertainty
  map are 0 outside it (in the written units), and the sidecar's ``"field_of_view"`` says which one it was
  (``"subject"``, ``"cohort majority of N subjects"``, or the whole grid without one).
* **verdict** (``verdict=``): whether the model beats the training subjects' mean image on held-out
  subjects (:class:`core.workflows.synthesis.Verdict` as a dict) goes into the sidecar and, short, into ``descrip``.

Writes are atomic (temporary name, then rename). :func:`export_cohort` stages a whole batch in a hidden
folder and moves it into place only when every file is written, so a cancelled or failed batch leaves
nothing behind. Source files are never written.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

import core
from core.atomic import SAFE_NAME_RULE, UnsafePathError, atomic_write_json, ensure_inside
from core.data.errors import ImageWriteError, Issue
from core.data.formats import strip_image_suffix
from core.data.preprocessing.normalization import NormalizationParams, otsu_threshold
from core.data.preprocessing.records import CohortRecords, SubjectRecord
from core.data.preprocessing.source_space import denormalize, source_grid_problem, to_source_space
from core.data.readers import read_header, read_volume
from core.data.writers import write_nifti
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

if TYPE_CHECKING:
    from core.workflows.impute import FieldOfView

__all__ = ["ExportError", "Provenance", "ExportResult", "write_synthesized", "export_cohort", "sidecar_path", "uncertainty_path"]


class ExportError(ImageWriteError):
    """A synthesized volume cannot be exported as asked; the message says why and what to change."""


@dataclass
class Provenance:
    """Where a synthesized volume comes from (written to the JSON sidecar).

    ``conditioning_modalities`` None means "the subject's observed modalities other than the target".
    """

    model: str
    run: str | None = None
    conditioning_modalities: Sequence[str] | None = None
    n_samples: int = 1
    statistic: str = "mean"
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Provenance | Mapping[str, Any]) -> Provenance:
        if isinstance(value, Provenance):
            return value
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        extra = {k: v for k, v in value.items() if k not in cls.__dataclass_fields__}
        if "model" not in known:
            raise ExportError("Provenance needs at least a 'model' name.")
        prov = cls(**known)
        prov.extra.update(extra)
        return prov


@dataclass
class ExportResult:
    subject: str
    modality: str
    image: Path
    sidecar: Path
    uncertainty: Path | None
    intensity_units: str
    reference_modality: str
    issues: list[Issue] = field(default_factory=list)


def sidecar_path(image_path: str | os.PathLike) -> Path:
    p = Path(image_path)
    return p.with_name(strip_image_suffix(p.name) + ".json")


def uncertainty_path(image_path: str | os.PathLike) -> Path:
    p = Path(image_path)
    stem = strip_image_suffix(p.name)
    return p.with_name(stem + "_std" + p.name[len(stem):])


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    return x


def _resolve_intensity(
    record: SubjectRecord, modality: str, intensity: str, intensity_params: NormalizationParams | None,
    records: CohortRecords | None,
) -> tuple[NormalizationParams | None, str]:
    if intensity == "normalized":
        return None, "normalized"
    if intensity_params is not None:
        return intensity_params, "given"
    own = record.modalities.get(modality)
    if own is not None and own.normalization is not None:
        return own.normalization, "subject"
    if records is not None and (ref := records.intensity_reference(modality)) is not None:
        return ref, "cohort median"
    if intensity == "source":
        raise ExportError(
            f"No normalisation parameters for {modality} of subject {record.subject} (it lacks {modality}). "
            "Fix: pass records= (cohort median parameters), intensity_params=, or intensity='normalized'."
        )
    return None, "normalized"


def _foreground_zero(params: NormalizationParams | None) -> bool:
    return params is not None and params.method != "none" and params.region == "foreground" and params.outside_region == "zero"


def _reference_foreground(record: SubjectRecord, reference: str, foreground: str) -> np.ndarray | None:
    rec = record.modalities[reference]
    try:
        vol = read_volume(rec.path)
    except Exception:  # noqa: BLE001 - the source may have moved; then no background rule is applied
        return None
    if not vol.geometry.allclose(rec.source_geometry, atol=1e-3):
        return None
    arr = np.nan_to_num(vol.array)
    if foreground == "otsu":
        return arr > otsu_threshold(arr[arr != 0] if np.any(arr != 0) else arr.ravel())
    return arr != 0


def write_synthesized(
    volume: Any,
    record: SubjectRecord,
    modality: str,
    path: str | os.PathLike,
    *,
    provenance: Provenance | Mapping[str, Any],
    reference: str | None = None,
    uncertainty: Any = None,
    intensity: Literal["auto", "source", "normalized"] = "auto",
    intensity_params: NormalizationParams | None = None,
    records: CohortRecords | None = None,
    overwrite: bool = False,
    field_of_view: FieldOfView | None = None,
    verdict: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write ``volume`` (model-grid array or tensor, ``(X, Y, Z)`` or ``(1, X, Y, Z)``) of ``modality`` for
    ``record``'s subject as NIfTI on the grid of ``reference``'s source file (default: the subject's
    reference modality), plus a JSON sidecar and, if given, the ``uncertainty`` (std) map.

    ``path`` must end in ``.nii.gz`` or ``.nii``. Raises :class:`ExportError` (nothing written) when the
    shape does not match the model grid, the reference has no source file, or ``path`` is a source file.
    """
    prov = Provenance.coerce(provenance)
    path = Path(path)
    if not path.name.lower().endswith((".nii.gz", ".nii")):
        raise ExportError(f"Export path {path} must end in .nii.gz or .nii.")
    reference = reference or record.reference_modality
    problem = source_grid_problem(record, reference)
    if problem is not None:
        raise ExportError(problem)
    sources = {Path(r.path).resolve() for r in record.modalities.values()}
    sources |= {Path(r.observation_mask_path).resolve() for r in record.modalities.values() if r.observation_mask_path}
    std_path = uncertainty_path(path) if uncertainty is not None else None
    for target in (path, sidecar_path(path), std_path):
        if target is not None and target.resolve() in sources:
            raise ExportError(f"Refusing to write {target}: it is one of the subject's source files.")
        if target is not None and target.exists() and not overwrite:
            raise ExportError(f"{target} exists. Fix: choose another name or pass overwrite=True.")
    mean = _as_array(volume)
    if mean.shape != record.grid.shape:
        raise ExportError(
            f"Synthesized {modality} for {record.subject} has shape {mean.shape}; the subject's model grid is "
            f"{record.grid.shape}. Fix: pass the volume in preprocessed space (as the model produced it)."
        )
    std = _as_array(uncertainty) if uncertainty is not None else None
    if std is not None and std.shape != mean.shape:
        raise ExportError(f"Uncertainty map shape {std.shape} != volume shape {mean.shape}.")
    issues: list[Issue] = []
    n_nonfinite = int(np.size(mean) - np.count_nonzero(np.isfinite(mean)))
    if n_nonfinite:
        mean = np.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
        issues.append(Issue("warning", f"{n_nonfinite} non-finite voxels in the model output were written as 0",
                            record.subject, modality))
    if std is not None:
        std = np.nan_to_num(std, nan=0.0, posinf=0.0, neginf=0.0)
    fov_mask = None
    if field_of_view is not None:
        fov_mask = np.asarray(field_of_view.mask, dtype=bool)
        if fov_mask.size != mean.size:
            raise ExportError(f"The field of view of {modality} for {record.subject} has shape {fov_mask.shape}; the "
                              f"subject's model grid is {record.grid.shape}.")
        fov_mask = fov_mask.reshape(mean.shape)

    params, params_source = _resolve_intensity(record, modality, intensity, intensity_params, records)
    units = "source" if params is not None else "normalized"
    if params is not None:
        mean = denormalize(mean, params)
        std = denormalize(std, params, is_std=True) if std is not None else None
    if fov_mask is not None:  # background 0 in the written units, before and after resampling
        mean = np.where(fov_mask, mean, 0.0).astype(np.float32)
        std = np.where(fov_mask, std, 0.0).astype(np.float32) if std is not None else None
    out, geometry, inside = to_source_space(mean, record, reference, order=1)
    out_std = to_source_space(std, record, reference, order=1)[0] if std is not None else None
    if fov_mask is not None:
        outside_fov = to_source_space(fov_mask.astype(np.float32), record, reference, order=0)[0] < 0.5
        out[outside_fov] = 0.0
        if out_std is not None:
            out_std[outside_fov] = 0.0
    foreground = records.config.normalization_for(modality).foreground if records is not None else "nonzero"
    background_rule = "none"
    if units == "source" and _foreground_zero(params):
        fg = _reference_foreground(record, reference, foreground)
        if fg is not None:
            out[~fg] = 0.0
            if out_std is not None:
                out_std[~fg] = 0.0
            background_rule = f"0 outside the {foreground} foreground of the {reference} source"
    ref_rec = record.modalities[reference]
    if Path(ref_rec.path).exists():
        try:
            now = read_header(ref_rec.path).geometry
            if not now.allclose(ref_rec.source_geometry, atol=1e-3):
                issues.append(Issue("warning", f"the {reference} source file's geometry changed since preprocessing; "
                                    "the export uses the geometry recorded then", record.subject, reference, ref_rec.path,
                                    "re-run preprocessing if the source was replaced on purpose"))
        except Exception:  # noqa: BLE001 - informative only
            pass
    qcode = ref_rec.qform_code or ref_rec.sform_code or 1
    scode = ref_rec.sform_code or ref_rec.qform_code or 1
    conditioning = list(prov.conditioning_modalities) if prov.conditioning_modalities is not None else [
        m for m in record.modalities if m != modality]
    judged = f"; {verdict['short']}" if verdict else ""
    description = f"SYNTHETIC {modality} mmvae{judged}; from {'+'.join(conditioning) or 'prior'}"
    intent = "synthetic" if units == "source" else "synth_norm"
    written: list[Path] = []
    try:
        write_nifti(path, out, geometry, qform_code=qcode, sform_code=scode, description=description,
                    intent_name=intent, xyzt_units=ref_rec.xyzt_units, overwrite=True)
        written.append(path)
        if out_std is not None and std_path is not None:
            write_nifti(std_path, out_std, geometry, qform_code=qcode, sform_code=scode,
                        description=f"SYNTHETIC {modality} std over {prov.n_samples} samples", intent_name="synthetic_std",
                        xyzt_units=ref_rec.xyzt_units, overwrite=True)
            written.append(std_path)
        sidecar = {
            "synthetic": True,
            "subject": record.subject,
            "modality": modality,
            "statistic": prov.statistic,
            "model": prov.model,
            "run": prov.run,
            "checkpoint": prov.checkpoint,
            "conditioning_modalities": conditioning,
            "n_samples": int(prov.n_samples),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software": {"name": "mmvae-workbench", "version": core.__version__},
            "uncertainty": std_path.name if std_path is not None and out_std is not None else None,
            "field_of_view": field_of_view.source if field_of_view is not None else "whole grid (no observation mask)",
            "verdict": dict(verdict) if verdict else None,
            "reference": {
                "modality": reference,
                "source_path": ref_rec.path,
                "shape": list(geometry.shape),
                "affine": geometry.to_dict()["affine"],
                "qform_code": qcode,
                "sform_code": scode,
            },
            "intensity": {
                "units": units,
                "parameters_from": params_source if params is not None else None,
                "normalization": params.to_dict() if params is not None else None,
                "note": "normalised = (clip(x) - shift) / scale was inverted; clipping is not invertible"
                if params is not None else "model (normalised) units",
                "background": background_rule,
            },
            "outside_model_grid_voxels": int(inside.size - np.count_nonzero(inside)),
            "nonfinite_replaced": n_nonfinite,
            "issues": [str(i) for i in issues],
            **({"extra": prov.extra} if prov.extra else {}),
        }
        side = atomic_write_json(sidecar_path(path), sidecar)
        written.append(side)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return ExportResult(record.subject, modality, path, side, std_path if out_std is not None else None, units,
                        reference, issues)


def export_cohort(
    volumes: Mapping[str, Mapping[str, Any]],
    records: CohortRecords | Mapping[str, SubjectRecord],
    out_dir: str | os.PathLike,
    *,
    provenance: Provenance | Mapping[str, Any],
    uncertainty: Mapping[str, Mapping[str, Any]] | None = None,
    reference: str | None = None,
    intensity: Literal["auto", "source", "normalized"] = "auto",
    filename: str = "{subject}_{modality}_synth.nii.gz",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    fields_of_view: Mapping[str, Mapping[str, FieldOfView]] | None = None,
    verdicts: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ExportResult]:
    """Export ``volumes[subject][modality]`` for a whole cohort into ``out_dir``, each inside
    ``fields_of_view[subject][modality]`` and with ``verdicts[modality]`` where given (:func:`write_synthesized`).

    Everything is first written to a hidden staging folder inside ``out_dir``; only when all files are
    written and verified are they moved into place. Cancelling (``cancel()`` polled between volumes,
    raising :class:`core.progress.Cancelled`) or any error removes the staging folder, so ``out_dir``
    is left as it was.
    """
    out_dir = Path(out_dir)
    prov = Provenance.coerce(provenance)
    items = [(s, m) for s, mods in volumes.items() for m in mods]
    missing = sorted({s for s, _ in items if s not in records})
    if missing:
        raise ExportError(f"No preprocessing record for subjects {missing[:5]}. Fix: pass the records returned by load_cohort_dataset.")
    names = [filename.format(subject=s, modality=m) for s, m in items]
    for name in names:  # a subject id or pattern must never lead a writer out of out_dir
        if Path(name).name != name:
            raise UnsafePathError(f"Refusing to export {name!r}: it is not a plain file name inside {out_dir}. "
                                  f"Fix: subject ids and modality names must follow the rule {SAFE_NAME_RULE}.")
        ensure_inside(out_dir / name, out_dir)
    if len(set(names)) != len(names):
        raise ExportError(f"filename pattern {filename!r} gives the same name to several volumes; include {{subject}} and {{modality}}.")
    if not overwrite:
        clash = [n for n in names if (out_dir / n).exists() or sidecar_path(out_dir / n).exists()]
        if clash:
            raise ExportError(f"{len(clash)} output file(s) exist, e.g. {out_dir / clash[0]}. Fix: pass overwrite=True or another folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".mmvae-export-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    cohort_records = records if isinstance(records, CohortRecords) else None
    results: list[ExportResult] = []
    try:
        for k, ((s, m), name) in enumerate(zip(items, names, strict=True)):
            raise_if_cancelled(cancel, "export")
            std = (uncertainty or {}).get(s, {}).get(m)
            res = write_synthesized(
                volumes[s][m], records[s], m, staging / name, provenance=prov, reference=reference,
                uncertainty=std, intensity=intensity, records=cohort_records, overwrite=True,
                field_of_view=(fields_of_view or {}).get(s, {}).get(m), verdict=(verdicts or {}).get(m),
            )
            results.append(res)
            report_progress(progress, k + 1, len(items), f"{s} {m}")
        raise_if_cancelled(cancel, "export")
        final: list[ExportResult] = []
        for res in results:
            moved = {}
            for attr in ("image", "uncertainty", "sidecar"):
                p = getattr(res, attr)
                if p is not None:
                    dest = out_dir / p.name
                    os.replace(p, dest)
                    moved[attr] = dest
            final.append(ExportResult(res.subject, res.modality, moved["image"], moved["sidecar"], moved.get("uncertainty"),
                                      res.intensity_units, res.reference_modality, res.issues))
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
