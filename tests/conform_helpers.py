"""Test helpers: IXI scan lookup, synthetic and re-encoded inputs, DICOM writing, a PNG montage."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def save_montage(
    volumes: Sequence[np.ndarray], template: np.ndarray, labels: Sequence[str], output_file: str | Path
) -> Path:
    """One row per volume: axial, coronal and sagittal mid-slices, template edges in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cx, cy, cz = (s // 2 for s in template.shape)
    cuts = [lambda v: v[:, :, cz + 5].T, lambda v: v[:, cy, :].T, lambda v: v[cx + 5, :, :].T]
    fig, axes = plt.subplots(len(volumes), 3, figsize=(6, 2 * len(volumes)), squeeze=False)
    for row, (volume, label) in enumerate(zip(volumes, labels, strict=True)):
        for col, cut in enumerate(cuts):
            ax = axes[row, col]
            ax.imshow(cut(volume), origin="lower", cmap="gray", vmin=-3, vmax=3)
            ax.contour(cut(template), levels=[0.45, 0.7], colors=["red", "yellow"], linewidths=0.4)
            ax.set_axis_off()
        axes[row, 0].set_title(label, fontsize=6, loc="left")
    fig.tight_layout()
    fig.savefig(output_file, dpi=80)
    plt.close(fig)
    return Path(output_file)


def synthetic_head(shape=(60, 70, 50)) -> np.ndarray:
    """A bright ellipsoid with a little noise."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return ((grid**2).sum(0) < 0.6).astype(np.float32) * 100 + rng.random(shape, dtype=np.float32)


def save_nifti(path: Path, data: np.ndarray, zooms=(3.0, 3.0, 3.0)) -> Path:
    """Save ``data`` with a diagonal affine."""
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """One file per validation problem, with a word its error message must contain."""
    good = save_nifti(folder / "good.nii.gz", synthetic_head())
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_image = folder / "notes.nii.gz"
    not_image.write_text("subject,age\nA,3\n")
    garbage = folder / "garbage.nii.gz"  # gzip of random bytes: nibabel cannot tell its file type
    garbage.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4000)))
    nan = synthetic_head()
    nan[: nan.shape[0] * 3 // 4] = np.nan  # a few NaN voxels are background; three quarters is no scan
    return {
        "truncated": (truncated, "unreadable or truncated"),
        "not_image": (not_image, "not a gzip file"),
        "garbage": (garbage, "Cannot work out file type"),
        "empty": (touch(folder / "empty.nii"), "empty"),
        "2d": (save_nifti(folder / "slice.nii.gz", synthetic_head((60, 70, 1))), "2D"),
        "tiny": (save_nifti(folder / "tiny.nii.gz", synthetic_head((6, 6, 6))), "too small"),
        "4d": (save_nifti(folder / "bold.nii.gz", np.stack([synthetic_head()] * 3, -1)), "3 volumes"),
        "zero": (save_nifti(folder / "zero.nii.gz", np.zeros((60, 70, 50), np.float32)), "all zero"),
        "nan": (save_nifti(folder / "nan.nii.gz", nan), "NaN"),
        "voxel": (save_nifti(folder / "voxel.nii.gz", synthetic_head(), (3.0, 3.0, 20.0)), "voxel size"),
        "fov": (
            save_nifti(folder / "fov.nii.gz", synthetic_head((60, 70, 10)), (1.0, 1.0, 1.0)),
            "field of view",
        ),
    }


def touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


IXI_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart"


def ixi_scans() -> list[Path]:
    """The IXI development scans (sorted), or skip the calling test when the folder is missing."""
    import pytest

    scans = sorted((IXI_DIR / "t1").glob("*.nii.gz"))
    if not scans:
        pytest.skip(f"IXI development set not found at {IXI_DIR.resolve()} (shared/realdata)")
    return scans


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes over ``mask``."""
    return float(np.corrcoef(np.asarray(a)[mask], np.asarray(b)[mask])[0, 1])


# Storage variants at the scan's own voxel size: a model's prediction should not depend on them.
INVARIANT_REENCODINGS = ("lpi", "origin25", "rot10", "int16")
# Copies interpolated onto other voxel sizes. Conform takes the voxel size for the acquired
# resolution (PreprocessConfig.match_resolution), so it blurs these copies of a 2 mm scan a little
# more than they need: their predictions move more than the invariant variants'.
RESAMPLED_REENCODINGS = ("iso1.5", "iso1.0", "aniso")


def reencoded_variants(path: Path, folder: Path) -> dict[str, Path]:
    """The same scan stored in other ways (orientation, grid, origin, rotation, dtype, 4D)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
    from nilearn.image import resample_img

    img = nib.load(path)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    variants: dict[str, nib.Nifti1Image] = {}
    variants["ras"] = nib.as_closest_canonical(img)
    variants["lpi"] = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt("LPI")))
    grids = {"iso1.5": (1.5, 1.5, 1.5), "iso1.0": (1.0, 1.0, 1.0), "aniso": (1.0, 1.2, 3.0)}
    for name, zooms in grids.items():
        variants[name] = resample_img(
            img,
            target_affine=np.diag(zooms),
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
    shifted = img.affine.copy()
    shifted[:3, 3] += [15.0, 0.0, 20.0]  # 25 mm
    variants["origin25"] = nib.Nifti1Image(data, shifted)
    angle = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    variants["rot10"] = nib.Nifti1Image(data, rotation @ img.affine)
    # Other units and offset, stored as int16: nibabel picks its own scl_slope / scl_inter.
    scaled = nib.Nifti1Image(data * np.float32(3.7) - np.float32(900.0), img.affine)
    scaled.set_data_dtype(np.int16)
    variants["int16"] = scaled
    variants["4d1"] = nib.Nifti1Image(data[..., None], img.affine)
    out = {}
    for name, image in variants.items():
        out[name] = folder / f"{name}.nii.gz"
        nib.save(image, out[name])
    return out


def write_dicom_series(path: Path, folder: Path) -> Path:
    """Store a NIfTI scan as a DICOM series (int16 slices along its third voxel axis)."""
    import nibabel as nib
    import SimpleITK as sitk

    from ermoe_ba.data.sitk_utils import array_to_sitk

    img = nib.load(path)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    volume = array_to_sitk(np.round(data * (3000.0 / data.max())).astype(np.int16), img.affine)
    direction = np.asarray(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(volume.GetSize()[2]):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.2",  # study instance uid
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2.1",  # series instance uid
            "0020|0013": str(k + 1),  # instance number
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),  # image position (patient)
            "0020|0037": orientation,  # image orientation (patient)
            "0018|0050": f"{volume.GetSpacing()[2]:.6f}",  # slice thickness
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # otherwise every slice gets its own series uid
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(slice_)
    return folder
