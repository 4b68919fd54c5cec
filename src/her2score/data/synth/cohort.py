"""Synthetic cohorts: patients with HER2 (and ER, PR, ISH) statuses drawn as in breast cancer, their
IHC whole slides or paired H&E/IHC patches, and a ``manifest.csv`` naming every file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from her2score.data.synth.cells import HER2_CATEGORIES, MARKERS, Case
from her2score.data.synth.glands import check_architecture
from her2score.data.synth.patches import draw_grade, render_pair
from her2score.data.synth.slides import SlideSpec, write_slide
from her2score.io import atomic_path, output_lock, write_csv, write_png

SLIDE_COLUMNS = ["slide", "stain", "her2", "ish", "er", "pr", "patient", "site"]
PAIR_COLUMNS = ["slide", "he", "her2", "patient", "site", "split"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Patient:
    """One case: identifier, true statuses, the site that stained and scanned it, morphology grade."""

    patient: str
    her2: str
    ish: str
    er: str
    pr: str
    site: int
    grade: float


def draw_patients(n: int, seed: int = 0, n_sites: int = 3) -> list[Patient]:
    """``n`` patients with balanced HER2 categories and ER/PR/ISH drawn conditionally on HER2.

    HER2-high tumours are more often ER-negative; PR mostly follows ER; ISH is negative for 0/1+,
    positive for 3+, and drawn (about a third positive) for 2+.
    """
    rng = np.random.default_rng([int(seed), 0xC0])
    cats = np.resize(np.array(HER2_CATEGORIES), n)
    rng.shuffle(cats)
    patients = []
    for i, her2 in enumerate(cats):
        her2 = str(her2)
        # About one IHC 2+ case in five is ISH-amplified in published series (roughly 10-30%).
        ish = "pos" if her2 == "3+" or (her2 == "2+" and rng.uniform() < 0.2) else "neg"
        p_er = {"0": 0.8, "1+": 0.8, "2+": 0.7, "3+": 0.5}[her2]
        er = "pos" if rng.uniform() < p_er else "neg"
        pr = "pos" if rng.uniform() < (0.8 if er == "pos" else 0.05) else "neg"
        patients.append(
            Patient(
                patient=f"P{i:04d}",
                her2=her2,
                ish=ish,
                er=er,
                pr=pr,
                site=int(rng.integers(0, max(1, n_sites))),
                grade=draw_grade(her2, rng),
            )
        )
    return patients


def _render_slide_job(args: tuple[str, SlideSpec]) -> str:
    path, spec = args
    write_slide(path, spec)
    return path


def _render_pair_job(args: tuple[str, str, str, str, int, int, int, float]) -> str:
    he_path, ihc_path, cells_path, her2, size, seed, site, mpp = args
    he, ihc, cells = render_pair(her2, size=(size, size), mpp=mpp, seed=seed, site=site)
    write_png(he_path, he)
    write_png(ihc_path, ihc)
    with atomic_path(cells_path) as tmp:
        cells.to_parquet(tmp, index=False)
    return ihc_path


def _keep_freed_memory() -> None:
    """In a worker: let glibc keep freed blocks instead of unmapping them.

    Rendering allocates and frees many 4-12 MB arrays per tile; by default each is a fresh mmap whose
    page faults cost about a fifth of the CPU time. Only the worker processes are changed.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _run(jobs: list, func: Callable, workers: int, progress: Progress | None) -> None:
    total = len(jobs)
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for i, job in enumerate(jobs, 1):
            func(job)
            if progress:
                progress(i, total)
        return
    import multiprocessing

    # forkserver: safe even when the caller has torch (and its threads) loaded, unlike a plain fork.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["her2score.data.synth.cohort"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_keep_freed_memory) as pool:
        for i, _ in enumerate(pool.map(func, jobs), 1):
            if progress:
                progress(i, total)


def make_cohort(
    out: str | Path,
    n: int,
    seed: int = 0,
    kind: str = "slides",
    *,
    markers: Sequence[str] = ("her2",),
    mpp: float = 0.5,
    size_mm: tuple[float, float] = (3.5, 2.5),
    n_sites: int = 3,
    patch_size: int = 512,
    patches_per_patient: int = 4,
    test_fraction: float = 0.25,
    workers: int = 2,
    progress: Progress | None = None,
    site_variation: str = "mild",
    look: str = "default",
    architecture: str = "solid",
) -> Path:
    """Write a synthetic cohort under ``out`` and return the path of its ``manifest.csv``.

    ``kind="slides"``: ``n`` patients, one pyramidal TIFF per patient and marker under ``out/slides/``
    (``<patient>_<marker>.tiff``) with its per-cell truth ``<stem>.cells.parquet``; manifest columns
    ``slide, stain, her2, ish, er, pr, patient, site``.
    ``kind="pairs"``: ``n`` H&E/IHC patch pairs in the BCI layout (``HE/``, ``IHC/``,
    ``NNNNN_{train,test}_{0,1+,2+,3+}.png``; ``patches_per_patient`` per patient, split by patient) with
    per-cell truth under ``cells/``; manifest columns ``slide, he, her2, patient, site, split``.
    ``site_variation`` (slides only): how far the sites' staining and scanners differ, ``mild`` or ``wide``
    (ranges in :data:`her2score.data.synth.render.SITE_VARIATION`); ``look``: ``default`` or ``foreign``
    (another renderer's stain vectors, scanner tone and cell scale, :data:`~.render.LOOKS`);
    ``architecture`` (slides only): ``solid`` nests of round cells or ``glandular`` tubular glands of
    columnar cells (:mod:`~.glands`). The same arguments give identical files.
    """
    from her2score.data.synth.render import LOOKS, SITE_VARIATION

    if site_variation not in SITE_VARIATION or look not in LOOKS:
        raise ValueError(
            f"site_variation must be one of {', '.join(SITE_VARIATION)} and look one of {', '.join(LOOKS)}"
        )
    out = Path(out)
    if n < 1:
        raise ValueError("n must be at least 1")
    check_architecture(architecture)
    if architecture != "solid" and kind != "slides":
        raise ValueError(f"architecture {architecture!r} is drawn for slides only, not {kind!r}")
    if kind == "slides":
        frame, jobs, func = _plan_slides(
            out, n, seed, markers, mpp, size_mm, n_sites, site_variation, look, architecture
        )
    elif kind == "pairs":
        frame, jobs, func = _plan_pairs(
            out, n, seed, mpp, n_sites, patch_size, patches_per_patient, test_fraction
        )
    else:
        raise ValueError(f"unknown cohort kind {kind!r}; expected 'slides' or 'pairs'")
    with output_lock(out):  # two generators into one folder would interleave their slides
        _run(jobs, func, workers, progress)
        return write_csv(out / "manifest.csv", frame)


def _plan_slides(
    out: Path,
    n: int,
    seed: int,
    markers: Sequence[str],
    mpp: float,
    size_mm: tuple[float, float],
    n_sites: int,
    variation: str = "mild",
    look: str = "default",
    architecture: str = "solid",
) -> tuple[pd.DataFrame, list, Callable]:
    markers = [m.strip().lower() for m in markers]
    unknown = [m for m in markers if m not in MARKERS]
    if unknown or not markers:
        raise ValueError(f"unknown marker(s) {unknown}; expected some of {MARKERS}")
    rows, jobs = [], []
    for i, p in enumerate(draw_patients(n, seed, n_sites)):
        for m in markers:
            rel = f"slides/{p.patient}_{m}.tiff"
            case = Case(her2=p.her2, er=p.er, pr=p.pr, marker=m, grade=p.grade, architecture=architecture)
            slide_seed = int(np.random.SeedSequence([int(seed), i, MARKERS.index(m)]).generate_state(1)[0])
            spec = SlideSpec(
                case=case, site=p.site, seed=slide_seed, size_mm=tuple(size_mm), mpp=float(mpp),
                variation=variation, look=look,
            )  # fmt: skip
            jobs.append((str(out / rel), spec))
            rows.append([rel, m, p.her2, p.ish, p.er, p.pr, p.patient, p.site])
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS), jobs, _render_slide_job


def _plan_pairs(
    out: Path,
    n: int,
    seed: int,
    mpp: float,
    n_sites: int,
    patch_size: int,
    per_patient: int,
    test_fraction: float,
) -> tuple[pd.DataFrame, list, Callable]:
    per_patient = max(1, int(per_patient))
    patients = draw_patients(-(-n // per_patient), seed, n_sites)
    rng = np.random.default_rng([int(seed), 0x5B])
    n_test = round(test_fraction * len(patients))
    test = set(rng.permutation(len(patients))[:n_test].tolist()) if len(patients) > 1 else set()
    rows, jobs = [], []
    for i in range(n):
        j = i // per_patient
        p = patients[j]
        split = "test" if j in test else "train"
        name = f"{i:05d}_{split}_{p.her2}.png"
        pair_seed = int(np.random.SeedSequence([int(seed), i, 0xBC1]).generate_state(1)[0])
        jobs.append(
            (
                str(out / "HE" / name),
                str(out / "IHC" / name),
                str(out / "cells" / name.replace(".png", ".parquet")),
                p.her2,
                int(patch_size),
                pair_seed,
                p.site,
                float(mpp),
            )
        )
        rows.append([f"IHC/{name}", f"HE/{name}", p.her2, p.patient, p.site, split])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), jobs, _render_pair_job
