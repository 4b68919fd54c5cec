"""Bad inputs across every command, as a table: each case runs the CLI and checks the exit status, one
line ``error: ...`` naming the file, no traceback, no raw file content echoed, no partial output left.

Exit statuses (every command's ``--help`` says them): 0 done; 1 a batch command finished but some items
(images, slides) failed and are listed; 2 bad usage or input, refused before any work; 130 interrupted.

Placeholders in a case's arguments: ``{E}`` the shared folder of bad inputs (built once), ``{T}`` the
case's own empty folder (outputs go there), ``{M}`` a tiny trained model, ``{C}`` its cohort's manifest.
Cases that may block (named pipes) run in a subprocess with a timeout, so that a hang fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "engine"))
from tiny_slides import make_tiny_cohort, slide_image

#: Content of the text file given as an image: it must never be echoed into a message or an output.
SECRET = "SECRET-CONTENT-7f3a"


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    status: int
    says: tuple[str, ...] = ()  #: substrings of the error output (file names, causes)
    subprocess: bool = False  #: run in a child process with a timeout (may block, or needs env)
    needs_model: bool = False
    error_line: bool = True  #: expects one ``error: ...`` line (False: usage errors, batch listings)
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  #: paths (with placeholders) that must not exist afterwards


CASES = [
    # ------------------------------------------------------------------ info
    Case(
        "info-missing-markup-name", ["info", "{E}/missing[/]x.png"], 2, ("missing[/]x.png", "does not exist")
    ),
    Case("info-empty-copy-emoji-name", ["info", "{E}/[copy] :x:.png"], 2, ("[copy] :x:.png", "empty")),
    Case("info-text-file", ["info", "{E}/text.txt"], 2, ("text.txt", "looks like text")),
    Case("info-pdf-named-svs", ["info", "{E}/report.svs"], 2, ("report.svs", "PDF")),
    Case("info-empty-file", ["info", "{E}/empty.png"], 2, ("empty.png", "empty")),
    Case(
        "info-truncated-png", ["info", "{E}/truncated.png", "--mpp", "1"], 2, ("truncated.png", "truncated")
    ),
    Case("info-grayscale", ["info", "{E}/gray.png", "--mpp", "1"], 2, ("gray.png", "grayscale")),
    Case("info-symlink-loop", ["info", "{E}/loop"], 2, ("loop", "symbolic link loop")),
    Case("info-broken-link", ["info", "{E}/dangling"], 2, ("dangling", "broken symbolic link")),
    Case("info-folder", ["info", "{E}/folder"], 2, ("folder", "is a folder")),
    Case("info-fifo", ["info", "{E}/fifo"], 2, ("fifo", "named pipe"), subprocess=True),
    Case("info-mpp-too-fine", ["info", "{E}/img.png", "--mpp", "0.01"], 2, ("--mpp 0.01", "implausible")),
    Case("info-mpp-negative", ["info", "{E}/img.png", "--mpp", "-1"], 2, ("--mpp -1", "not a resolution")),
    Case("info-mpp-nan", ["info", "{E}/img.png", "--mpp", "nan"], 2, ("not a resolution",)),
    Case("info-jpeg-named-png-is-fine", ["info", "{E}/jpeg.png", "--mpp", "1", "--no-tissue"], 0),
    # ---------------------------------------------------------------- doctor
    Case(
        "doctor-cache-is-a-file",
        ["doctor"],
        1,
        ("cache", "not writable"),
        subprocess=True,
        error_line=False,
        env={"HER2SCORE_CACHE": "{E}/text.txt"},
    ),
    # ----------------------------------------------------------------- synth
    Case("synth-out-is-a-file", ["synth", "--out", "{E}/text.txt", "-q"], 2, ("text.txt", "not a folder")),
    Case(
        "synth-out-under-a-file",
        ["synth", "--out", "{E}/text.txt/cohort", "-q"],
        2,
        ("text.txt/cohort", "is a file, not a folder"),
    ),
    Case("synth-out-link-loop", ["synth", "--out", "{E}/loop", "-q"], 2, ("loop", "symbolic link loop")),
    Case(
        "synth-n-0", ["synth", "--out", "{T}/s", "--n", "0"], 2, ("--n",), error_line=False, absent=("{T}/s",)
    ),
    Case("synth-unknown-kind", ["synth", "--out", "{T}/s", "--kind", "movies"], 2, ("movies",)),
    Case("synth-bad-size", ["synth", "--out", "{T}/s", "--size-mm", "big"], 2, ("--size-mm",)),
    Case("synth-bad-mpp", ["synth", "--out", "{T}/s", "--mpp", "0"], 2, ("--mpp",), absent=("{T}/s",)),
    # -------------------------------------------------------------- quantify
    Case("quantify-out-is-a-file", ["quantify", "{E}/img.png", "--out", "{E}/text.txt"], 2, ("text.txt",)),
    Case(
        "quantify-out-under-a-file",
        ["quantify", "{E}/img.png", "--out", "{E}/text.txt/o"],
        2,
        ("text.txt/o", "not a folder"),
    ),
    Case(
        "quantify-thresholds-folder",
        ["quantify", "{E}/img.png", "--out", "{T}/o", "--thresholds", "{E}/folder"],
        2,
        ("folder", "is a folder"),
        absent=("{T}/o",),
    ),
    Case(
        "quantify-thresholds-wrong-type",
        ["quantify", "{E}/img.png", "--out", "{T}/o", "--thresholds", "{E}/thresholds_bad.json"],
        2,
        ("thresholds_bad.json",),
        absent=("{T}/o",),
    ),
    Case(
        "quantify-goes-on-past-broken-files",
        ["quantify", "{E}/missing.png", "{E}/text.txt", "{E}/x[/]y.png", "--out", "{T}/o", "-q"],
        1,
        ("missing.png", "text.txt", "x[/]y.png", "failed"),
        error_line=False,
    ),
    Case(
        "quantify-fifo-in-a-batch",
        ["quantify", "{E}/fifo", "{E}/text.txt", "--out", "{T}/o", "-q"],
        1,
        ("fifo", "named pipe"),
        subprocess=True,
        error_line=False,
    ),
    Case(
        "quantify-folder-of-a-fifo",
        ["quantify", "{E}/fifo_folder", "--out", "{T}/o", "-q"],
        2,
        ("fifo_folder", "no slide or image"),
        subprocess=True,
    ),
    Case(
        "quantify-mpp-too-fine", ["quantify", "{E}/img.png", "--out", "{T}/o", "--mpp", "0.01"], 2, ("0.01",)
    ),
    Case(
        "quantify-bad-stain-vectors",
        ["quantify", "{E}/img.png", "--out", "{T}/o", "--stain-vectors", "x"],
        2,
        ("--stain-vectors",),
        absent=("{T}/o",),
    ),
    # ------------------------------------------------------------- calibrate
    Case(
        "calibrate-unknown-category",
        ["calibrate", "{E}/img.png", "--category", "4+", "--out", "{T}/t.json"],
        2,
        ("--category", "4+"),
        absent=("{T}/t.json",),
    ),
    Case(
        "calibrate-out-is-a-folder",
        ["calibrate", "{E}/img.png", "--category", "3+", "--out", "{E}/folder"],
        2,
        ("folder", "is a folder"),
    ),
    Case(
        "calibrate-out-under-a-file",
        ["calibrate", "{E}/img.png", "--category", "3+", "--out", "{E}/text.txt/t.json"],
        2,
        ("text.txt/t.json", "not a folder"),
    ),
    Case(
        "calibrate-text-control",
        ["calibrate", "{E}/text.txt", "--category", "3+", "--out", "{T}/t.json"],
        2,
        ("text.txt", "looks like text"),
        absent=("{T}/t.json",),
    ),
    Case(
        "calibrate-thresholds-wrong-type",
        [
            "calibrate",
            "{E}/img.png",
            "--category",
            "3+",
            "--out",
            "{T}/t.json",
            "--thresholds",
            "{E}/thresholds_bad.json",
        ],
        2,
        ("thresholds_bad.json",),
        absent=("{T}/t.json",),
    ),
    # ----------------------------------------------------------------- train
    Case(
        "train-manifest-folder", ["train", "--manifest", "{E}/folder", "--out", "{T}/r"], 2, ("is a folder",)
    ),
    Case(
        "train-semicolon-manifest",
        ["train", "--manifest", "{E}/semicolon.csv", "--out", "{T}/r"],
        2,
        ("semicolon.csv", "';'-separated"),
    ),
    Case("train-manifest-loop", ["train", "--manifest", "{E}/loop", "--out", "{T}/r"], 2, ("link loop",)),
    Case(
        "train-manifest-fifo",
        ["train", "--manifest", "{E}/fifo", "--out", "{T}/r"],
        2,
        ("fifo", "named pipe"),
        subprocess=True,
    ),
    Case("train-manifest-empty", ["train", "--manifest", "{E}/empty.csv", "--out", "{T}/r"], 2, ("empty",)),
    Case(
        "train-manifest-bad-label",
        ["train", "--manifest", "{E}/bad_label.csv", "--out", "{T}/r"],
        2,
        ("bad_label.csv", "row 2", "5+"),
    ),
    Case(
        "train-out-is-a-file", ["train", "--manifest", "{C}", "--out", "{E}/text.txt"], 2, ("not a folder",)
    ),
    Case(
        "train-unknown-task",
        ["train", "--manifest", "{C}", "--out", "{T}/r", "--task", "her2-5way"],
        2,
        ("her2-5way",),
    ),
    Case(
        "train-unknown-model",
        ["train", "--manifest", "{C}", "--out", "{T}/r", "--model", "nosuch"],
        2,
        ("nosuch",),
    ),
    Case(
        "train-config-unknown-key",
        ["train", "--manifest", "{C}", "--out", "{T}/r", "--config", "{E}/unknown_key.yaml"],
        2,
        ("unknown_key.yaml", "learning_rate"),
        absent=("{T}/r",),
    ),
    Case(
        "train-config-folder",
        ["train", "--manifest", "{C}", "--out", "{T}/r", "--config", "{E}/folder"],
        2,
        ("is a folder",),
    ),
    # -------------------------------------------------------------- evaluate
    Case(
        "evaluate-model-folder",
        ["evaluate", "--model", "{E}/folder", "--manifest", "{C}", "--out", "{T}/e"],
        2,
        ("folder", "is a folder", "model.safetensors"),
    ),
    Case(
        "evaluate-foreign-safetensors",
        ["evaluate", "--model", "{E}/foreign.safetensors", "--manifest", "{C}", "--out", "{T}/e"],
        2,
        ("foreign.safetensors", "not a her2score model"),
    ),
    Case(
        "evaluate-truncated-model",
        ["evaluate", "--model", "{E}/truncated.safetensors", "--manifest", "{C}", "--out", "{T}/e"],
        2,
        ("truncated.safetensors",),
        needs_model=True,
    ),
    Case(
        "evaluate-out-is-a-file",
        ["evaluate", "--model", "{M}", "--manifest", "{C}", "--out", "{E}/text.txt"],
        2,
        ("text.txt", "not a folder"),
        needs_model=True,
    ),
    Case(
        "evaluate-cache-is-a-file",
        ["evaluate", "--model", "{M}", "--manifest", "{C}", "--out", "{T}/e", "--cache", "{E}/text.txt"],
        2,
        ("text.txt", "--cache"),
        needs_model=True,
        absent=("{T}/e",),
    ),
    Case(
        "evaluate-skips-missing-and-foreign-slides",
        [
            "evaluate",
            "--model",
            "{M}",
            "--manifest",
            "{E}/mixed.csv",
            "--out",
            "{T}/e",
            "--n-boot",
            "5",
            "-q",
        ],
        1,
        ("skipped", "gone.tiff", "does not exist", "text.txt", "looks like text"),
        needs_model=True,
        error_line=False,
    ),
    # --------------------------------------------------------------- predict
    Case(
        "predict-out-is-a-folder",
        ["predict", "--model", "{M}", "{E}/img.png", "--out", "{E}/folder"],
        2,
        ("folder", "is a folder"),
        needs_model=True,
    ),
    Case(
        "predict-heatmaps-is-a-file",
        ["predict", "--model", "{M}", "{E}/img.png", "--out", "{T}/p.csv", "--heatmaps", "{E}/text.txt"],
        2,
        ("text.txt", "--heatmaps"),
        needs_model=True,
        absent=("{T}/p.csv",),
    ),
    Case(
        "predict-cache-is-a-file",
        ["predict", "--model", "{M}", "{E}/img.png", "--out", "{T}/p.csv", "--cache", "{E}/text.txt"],
        2,
        ("text.txt", "--cache"),
        needs_model=True,
        absent=("{T}/p.csv",),
    ),
    Case(
        "predict-model-loop",
        ["predict", "--model", "{E}/loop", "{E}/img.png", "--out", "{T}/p.csv"],
        2,
        ("loop", "symbolic link loop"),
    ),
    Case(
        "predict-model-name-not-a-file",
        ["predict", "--model", "lowres-resnet", "{E}/img.png", "--out", "{T}/p.csv"],
        2,
        ("lowres-resnet", "not found"),
    ),
    Case(
        "predict-every-slide-fails",
        ["predict", "--model", "{M}", "{E}/text.txt", "{E}/[copy] :x:.png", "--out", "{T}/p.csv", "-q"],
        1,
        ("2 slide(s) skipped", "text.txt", "[copy] :x:.png"),
        needs_model=True,
        error_line=False,
    ),
    Case(
        "predict-fifo-slide",
        ["predict", "--model", "{M}", "{E}/fifo", "--out", "{T}/p.csv", "-q"],
        1,
        ("fifo", "named pipe"),
        needs_model=True,
        subprocess=True,
        error_line=False,
    ),
    # ---------------------------------------------------------- models, demo
    Case("models-unknown-option", ["models", "--bogus"], 2, ("--bogus",), error_line=False),
    Case("demo-out-is-a-file", ["demo", "--out", "{E}/text.txt"], 2, ("text.txt", "not a folder")),
    Case("demo-out-under-a-file", ["demo", "--out", "{E}/text.txt/d"], 2, ("is a file, not a folder",)),
    Case("demo-too-few-slides", ["demo", "--out", "{T}/d", "--n", "3"], 2, ("--n",), error_line=False),
]


def _png(path: Path, rgb: np.ndarray, **kwargs: object) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared folder of bad (and a few good) inputs."""
    from PIL import Image

    e = tmp_path_factory.mktemp("bad inputs")
    rgb = slide_image("3+", 1, 256)
    _png(e / "img.png", rgb)
    Image.fromarray(rgb).convert("L").save(e / "gray.png")
    _png(e / "jpeg.png", rgb, format="JPEG")
    data = (e / "img.png").read_bytes()
    (e / "truncated.png").write_bytes(data[: len(data) // 2])
    (e / "empty.png").write_bytes(b"")
    (e / "[copy] :x:.png").write_bytes(b"")
    (e / "text.txt").write_text(SECRET + "\n")
    (e / "report.svs").write_bytes(b"%PDF-1.7\n" + SECRET.encode())
    (e / "x[").mkdir()
    (e / "x[" / "]y.png").write_text(SECRET)
    (e / "folder").mkdir()
    (e / "fifo_folder").mkdir()
    os.mkfifo(e / "fifo")
    os.mkfifo(e / "fifo_folder" / "pipe.png")
    os.symlink("loop", e / "loop")
    os.symlink("nowhere.png", e / "dangling")
    (e / "thresholds_bad.json").write_text('{"thresholds": {"faint": "high"}}')
    (e / "semicolon.csv").write_text("slide;her2\nimg.png;3+\n")
    (e / "empty.csv").write_text("")
    (e / "bad_label.csv").write_text("slide,her2\nimg.png,5+\n")
    (e / "unknown_key.yaml").write_text("learning_rate: 0.1\n")
    (e / "foreign.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    return e


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cohort(tmp_path_factory.mktemp("cohort"), n=8, size=256, mpp=4.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, cohort: Path, bad: Path) -> Path:
    """A 1-epoch lowres-resnet at 32 px on the 8-slide cohort (about 10 s), plus inputs built from it."""
    from her2score.engine.config import load_config
    from her2score.engine.train import train_run

    folder = tmp_path_factory.mktemp("model")
    cfg = load_config(
        None, model="lowres-resnet", input_size=32, mpp=16.0, batch_size=4, epochs=1, n_boot=5,
        warmup_epochs=0, device="cpu", cache_dir=str(folder / "cache"), augment={"blur_prob": 0.0},
    )  # fmt: skip
    from her2score.data.manifest import load_manifest

    train_run(load_manifest(cohort, cfg.task), cfg, folder / "run", quiet=True, log=lambda *a, **k: None)
    path = folder / "run" / "model.safetensors"
    data = path.read_bytes()
    (bad / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    slides = cohort.parent / "slides"
    (bad / "mixed.csv").write_text(
        f"slide,her2\n{slides / 'case_000.tiff'},0\n{slides / 'case_003.tiff'},3+\n"
        f"{bad / 'gone.tiff'},2+\n{bad / 'text.txt'},1+\n"
    )
    return path


def _fill(arg: str, e: Path, t: Path, m: Path | None, c: Path) -> str:
    return arg.replace("{E}", str(e)).replace("{T}", str(t)).replace("{M}", str(m)).replace("{C}", str(c))


def _run(
    case: Case, argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    if case.subprocess:
        code = "import sys; from her2score.cli.main import main; main(sys.argv[1:])"
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, env=full_env,
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case.id}: hung (no answer in 60 s)")
        return proc.returncode, proc.stdout, proc.stderr
    from her2score.cli.main import main

    try:
        main(argv)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, bad: Path, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    m = request.getfixturevalue("model") if case.needs_model else None
    argv = [_fill(a, bad, tmp_path, m, cohort) for a in case.argv]
    env = {k: _fill(v, bad, tmp_path, m, cohort) for k, v in case.env.items()}
    status, out, err = _run(case, argv, env, capsys)
    both = out + err
    assert status == case.status, both
    assert "Traceback" not in both
    assert SECRET not in both  # a file's content is never echoed
    for text in case.says:
        assert _fill(text, bad, tmp_path, m, cohort) in both, both
    if case.status == 2 and case.error_line:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, err
        assert lines[-1] == errors[0], err  # the error ends the output, on one line
    for pattern in ("*.part", "*.part.*"):
        leftovers = [*tmp_path.rglob(pattern), *bad.rglob(pattern)]
        assert not leftovers, leftovers
    for path in case.absent:
        assert not Path(_fill(path, bad, tmp_path, m, cohort)).exists(), path
    for csv in tmp_path.rglob("*.csv"):
        assert SECRET not in csv.read_text()  # skipped_slides.csv, results.csv, predictions


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("runs as root, where a 0o555 folder is still writable")
    from her2score.cli.main import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for argv in (["synth", "--out", str(locked / "s")], ["synth", "--out", str(locked)]):
            with pytest.raises(SystemExit) as exit_info:
                main([*argv, "-q"])
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert "not writable" in err
            assert str(locked) in err
    finally:
        locked.chmod(0o755)


def test_enough_cases() -> None:
    assert len(CASES) >= 40
    commands = {c.argv[0] for c in CASES}
    assert commands >= {"info", "doctor", "synth", "quantify", "calibrate", "train", "evaluate", "predict"}
    assert commands >= {"models", "demo"}
