"""The command line: fast help, defaults shown, shipped seeds, early one-line errors, --debug.

Every argument error must come back before any work (no torch import, no model load) as one
line naming the flag, with exit status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sklearn_lib import _cli
from sklearn_lib._cli import build_parser, main, shipped_seeds

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn", "numpy", "matplotlib", "transformer_lens", "scipy")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _usage_error(capsys, argv, *needles):
    """Run ``main(argv)``; assert exit 2 and one stderr line with every needle."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors exit through _Parser.error
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- speed: no heavy imports for --help or argument errors ----------------------------------------

def test_help_and_argument_errors_import_nothing_heavy():
    code = (
        "import sys\n"
        "from sklearn_lib._cli import main\n"
        "rc = main(['modadd', '--json', '/', '--figure', 'x.png'])\n"
        "import sklearn_lib, sklearn_lib.tasks\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = _python(code)
    assert out.stdout.split("\n")[0] == "2 []", out.stdout + out.stderr


def test_modadd_help_answers_quickly_and_shows_defaults():
    import time

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sklearn_lib._cli", "modadd", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    assert "modadd_preset" in out.stdout and "(default: lib)" in out.stdout
    assert "(default: 256)" in out.stdout
    # Well under a second on an idle machine; the bound leaves room for a loaded CI runner.
    assert elapsed < 5.0, elapsed


def test_every_flag_has_a_description_and_a_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, _cli.argparse._SubParsersAction))
    assert set(sub.choices) == {"demo", "modadd", "lm"}
    for name, p in sub.choices.items():
        assert p.description, name
        text = p.format_help()
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            # Either argparse shows the default or the help says what the default means.
            assert "default" in _cli._HelpFormatter(name)._get_help_string(action), \
                (name, action.dest)
        assert "--quiet" in text and "--debug" in text


def test_shipped_seeds_are_the_ones_the_package_declares():
    from sklearn_lib.tasks import SHIPPED_SEEDS

    assert shipped_seeds() == list(SHIPPED_SEEDS)


# --- arguments checked before any work ------------------------------------------------------------

def test_unknown_seed_lists_the_shipped_ones(capsys):
    line = _usage_error(capsys, ["modadd", "--seed", "7"], "--seed", "0, 2, 3, 4, 5")
    assert "seed 7" in line


@pytest.mark.parametrize("argv, flag", [
    (["modadd", "--batch-size", "0"], "--batch-size"),
    (["modadd", "--batch-size", "many"], "--batch-size"),
    (["modadd", "--frac-train", "1.5"], "--frac-train"),
    (["modadd", "--rtol", "-1"], "--rtol"),
    (["modadd", "--atol", "nan"], "--atol"),
    (["modadd", "--tolerance", "-0.1"], "--tolerance"),
    (["modadd", "--split-seed", "-3"], "--split-seed"),
    (["modadd", "--basis", "ica"], "--basis"),
    (["demo", "--seed", "x"], "--seed"),
])
def test_bad_values_fail_with_one_line_naming_the_flag(capsys, argv, flag):
    _usage_error(capsys, argv, flag)


def test_seed_and_checkpoint_are_exclusive(capsys):
    _usage_error(capsys, ["modadd", "--seed", "2", "--checkpoint", "model.pt"],
                 "--checkpoint", "--seed")


def test_config_without_checkpoint_is_refused(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    _usage_error(capsys, ["modadd", "--config", str(cfg)], "--config", "--checkpoint")


def test_missing_checkpoint(capsys, tmp_path):
    _usage_error(capsys, ["modadd", "--checkpoint", str(tmp_path / "nope.pt")],
                 "--checkpoint", "does not exist")


def test_checkpoint_without_config_next_to_it(capsys, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    _usage_error(capsys, ["modadd", "--checkpoint", str(ckpt)], "--config", "config.json")


@pytest.mark.parametrize("text, needle", [("{not json", "not valid JSON"),
                                          ("[1, 2]", "JSON list")])
def test_bad_config(capsys, tmp_path, text, needle):
    ckpt, cfg = tmp_path / "model.pt", tmp_path / "cfg.json"
    ckpt.write_bytes(b"")
    cfg.write_text(text)
    _usage_error(capsys, ["modadd", "--checkpoint", str(ckpt), "--config", str(cfg)],
                 "--config", needle)


def test_output_path_that_is_a_folder(capsys, tmp_path):
    _usage_error(capsys, ["modadd", "--json", str(tmp_path)], "--json", "is a folder")
    _usage_error(capsys, ["modadd", "--json", str(tmp_path) + "/"], "--json", "is a folder")


def test_output_path_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _usage_error(capsys, ["modadd", "--json", str(blocker / "out.json")], "--json", "is a file")
    _usage_error(capsys, ["modadd", "--figure", str(blocker / "a" / "b.png")],
                 "--figure", "cannot be created")


def test_figure_needs_a_known_extension(capsys, tmp_path):
    _usage_error(capsys, ["modadd", "--figure", str(tmp_path / "graph.xyz")],
                 "--figure", "'.xyz'", ".png")
    _usage_error(capsys, ["modadd", "--figure", str(tmp_path / "graph")],
                 "--figure", "no extension")


def test_json_and_figure_must_differ(capsys, tmp_path):
    path = str(tmp_path / "same.png")
    _usage_error(capsys, ["modadd", "--json", path, "--figure", path], "--figure", "same file")


def test_unwritable_folder(capsys, tmp_path, monkeypatch):
    # Root may write anywhere, so the permission answer is simulated; the logic is what counts.
    real = os.access
    monkeypatch.setattr(_cli.os, "access", lambda p, mode: False if Path(p) == tmp_path
                        else real(p, mode))
    _usage_error(capsys, ["modadd", "--json", str(tmp_path / "r.json")], "--json",
                 "not writable")
    _usage_error(capsys, ["demo", "--out", str(tmp_path / "new" / "folder")], "--out",
                 "cannot be created", "not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_really_unwritable_folder(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _usage_error(capsys, ["modadd", "--json", str(locked / "r.json")], "--json",
                     "not writable")
    finally:
        locked.chmod(0o700)


def test_existing_unwritable_file(capsys, tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("{}")
    real = os.access
    monkeypatch.setattr(_cli.os, "access", lambda p, mode: False if Path(p) == target
                        else real(p, mode))
    _usage_error(capsys, ["modadd", "--json", str(target)], "--json", "not writable")


def test_demo_out_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    _usage_error(capsys, ["demo", "--out", str(f)], "--out", "not a folder")


def test_checks_run_before_the_work(tmp_path, monkeypatch):
    import sklearn_lib.tasks._modadd_experiment as experiment

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiment started before the arguments were checked")

    monkeypatch.setattr(experiment, "run_modadd_experiment", must_not_run)
    assert main(["modadd", "--json", str(tmp_path)]) == 2


# --- what reaches the experiment ------------------------------------------------------------------

class _Captured(Exception):
    pass


def _capture(monkeypatch):
    import sklearn_lib.tasks._modadd_experiment as experiment

    seen = {}

    def fake(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Captured

    monkeypatch.setattr(experiment, "run_modadd_experiment", fake)
    return seen


def test_truncation_defaults_are_the_estimators(monkeypatch):
    seen = _capture(monkeypatch)
    with pytest.raises(_Captured):
        main(["modadd", "--debug"])
    kw = seen["kwargs"]
    assert kw["rtol"] is None and kw["atol"] is None
    assert kw["verbose"] is True and kw["seed"] == 0 and seen["args"] == (None, None)
    with pytest.raises(_Captured):
        main(["modadd", "--debug", "--quiet", "--seed", "3", "--rtol", "0", "--atol", "1e-9"])
    kw = seen["kwargs"]
    assert (kw["rtol"], kw["atol"], kw["verbose"], kw["seed"]) == (0.0, 1e-9, False, 3)


def test_no_truncation_constants_in_the_cli_or_tasks():
    files = [ROOT / "sklearn_lib" / "_cli.py", ROOT / "sklearn_lib" / "_modadd_cli.py",
             *sorted((ROOT / "sklearn_lib" / "tasks").glob("*.py"))]
    for f in files:
        text = f.read_text()
        for constant in ("1e-13", "1e-15"):
            assert constant not in text, (f.name, constant)


def test_error_during_the_work_is_one_line_or_a_traceback_with_debug(capsys, monkeypatch):
    import sklearn_lib.tasks._modadd_experiment as experiment

    def broken(*args, **kwargs):
        raise ValueError("the activations are\nconstant")

    monkeypatch.setattr(experiment, "run_modadd_experiment", broken)
    assert main(["modadd", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sklearn-lib modadd: error: ValueError: the activations are constant "
                   "(run with --debug for the traceback)"]
    with pytest.raises(ValueError, match="activations are"):
        main(["modadd", "--quiet", "--debug"])


def test_results_are_printed_and_written(capsys, monkeypatch, tmp_path):
    import sklearn_lib.tasks._modadd_experiment as experiment

    result = {
        "basis": "lib", "checkpoint": "seed0", "model_test_accuracy": 1.0, "n_train": 3,
        "n_test": 4, "rtol": 1e-9, "atol": 0.0, "modularity": 0.5, "n_communities": 2,
        "seconds": {"build": 1.0, "ablation": 2.0}, "peak_rss_mb": 10.0,
        "pairs": [{"layer_in": "a", "layer_out": "b", "dims_in": 3, "dims_out": 2,
                   "n_edges_needed": 4, "n_edges_total": 6, "accuracy_at_needed": 0.999,
                   "accuracy_at_one_fewer": 0.9}],
        "fourier_labels": {"a": ["99% cos(x+y)"]},
    }
    monkeypatch.setattr(experiment, "run_modadd_experiment", lambda *a, **k: result)
    out = tmp_path / "deep" / "r.json"
    assert main(["modadd", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == result
    stdout = capsys.readouterr().out
    assert "a -> b" in stdout and "99% cos(x+y)" in stdout and "rtol=1e-09" in stdout


def test_demo_gets_its_arguments(monkeypatch, tmp_path):
    import sklearn_lib._demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["demo", "--out", str(tmp_path / "d"), "--seed", "3", "--quiet"]) == 0
    assert seen == {"out": str(tmp_path / "d"), "seed": 3, "verbose": False}


def test_default_truncation_is_printed(capsys, monkeypatch):
    """The estimators' default truncation (rtol=None, atol=0) prints as the round-off rule."""
    import sklearn_lib.tasks._modadd_experiment as experiment

    result = {
        "basis": "lib", "checkpoint": "seed0", "model_test_accuracy": 1.0, "n_train": 3,
        "n_test": 4, "rtol": None, "atol": 0.0, "modularity": 0.5, "n_communities": 2,
        "seconds": {"build": 1.0, "ablation": 2.0}, "peak_rss_mb": 10.0, "pairs": [],
        "fourier_labels": {},
    }
    monkeypatch.setattr(experiment, "run_modadd_experiment", lambda *a, **k: result)
    assert main(["modadd", "--quiet"]) == 0
    assert "truncation round-off rule (rtol=None))" in capsys.readouterr().out
