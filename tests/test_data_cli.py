"""``zsl-data`` commands through ``main([...])``: summaries, conversions, and one-line user errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from zsl_gen.cli.data import main
from zsl_gen.data import load_byo, load_raw, load_xlsa17, make_synthetic, save_byo, save_xlsa17
from zsl_gen.data import download as dl

try:
    from data_helpers import REAL, real_file
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import REAL, real_file


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def xlsa17_dir(tmp_path):
    raw = make_synthetic(seed=0, n_classes=12, n_unseen=3, n_val_classes=2, feature_dim=16,
                         samples_per_class=10)
    raw.name = "SYN"
    return save_xlsa17(raw, tmp_path / "SYN"), raw


def test_simulate_writes_a_loadable_xlsa17_dir(tmp_path, capsys):
    src = real_file("CUB")
    out = tmp_path / "CUB"
    argv = ["simulate", "--att-splits", str(src), "--out", str(out), "--feature-dim", "8", "--seed", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "res101.mat" in text and "200 classes (seen 150, unseen 50, val 50)" in text
    assert (out / "att_splits.mat").read_bytes() == src.read_bytes()
    raw = load_xlsa17(out, name="CUB")
    exp = REAL[("CUB", "att_splits.mat")]
    assert raw.features.shape == (exp["trainval"] + exp["test_seen"] + exp["test_unseen"], 8)
    assert len(raw.seen_classes) == 150 and len(raw.unseen_classes) == 50
    # the file says its features are simulated, and so do `info` and a run's dataset record
    note = "simulated features (zsl-data simulate, seed 1, 8-d), not real image features"
    assert raw.features_note == note
    assert main(["info", str(out)]) == 0 and f"features: {note}" in capsys.readouterr().out
    from omegaconf import OmegaConf

    from zsl_gen.pipeline import dataset_record

    ds = OmegaConf.create({"kind": "files", "feature_scaling": "minmax", "l2_semantics": False,
                           "semantics_file": "att_splits.mat", "semantic_key": "att"})
    record = dataset_record(raw, ds)
    assert record["features_note"] == note
    from zsl_gen.results import summary_table  # a run's printed summary says so too

    selection = {"gzsl": {"S": 1.0, "U": 1.0, "H": 1.0}, "zsl": {"T1": 1.0}, "optimistic": False, "chosen_on": "val",
                 "gzsl_chosen": {"epoch": 1, "classifier": "", "gamma": None}}
    table = summary_table({"method": "cvae", "seed": 0, "dataset": record, "results": {"val": selection}})
    assert f"! {note}: not CUB's benchmark numbers" in table
    assert "benchmark numbers" not in summary_table({"method": "cvae", "seed": 0, "results": {"val": selection},
                                                     "dataset": {**record, "features_note": None}})
    # refuses to overwrite features without --force
    line = _user_error(capsys, ["simulate", "--att-splits", str(src), "--out", str(out)])
    assert "res101.mat already exists" in line and "--force" in line


def test_info_prints_summary_and_checksums(xlsa17_dir, capsys):
    root, raw = xlsa17_dir
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "12 classes (seen 9, unseen 3, val 2)" in out
    assert f"trainval {raw.locs['trainval'].size}" in out and "features 16-d" in out
    digest = hashlib.sha256((root / "res101.mat").read_bytes()).hexdigest()
    assert digest[:16] in out


def test_info_with_other_semantics_file(tmp_path, capsys):
    src = real_file("CUB", "sent_splits.mat")
    main(["simulate", "--att-splits", str(src), "--out", str(tmp_path), "--feature-dim", "4"])
    capsys.readouterr()
    assert main(["info", str(tmp_path), "--semantics-file", "sent_splits.mat"]) == 0
    assert "semantics 1024-d (sent)" in capsys.readouterr().out


def test_convert_both_directions(xlsa17_dir, tmp_path, capsys):
    root, raw = xlsa17_dir
    assert main(["convert", str(root), str(tmp_path / "byo")]) == 0
    assert "(xlsa17) ->" in capsys.readouterr().out
    byo = load_byo(tmp_path / "byo")
    assert byo.name == "SYN"
    np.testing.assert_allclose(byo.features, raw.features)
    assert main(["convert", str(tmp_path / "byo"), str(tmp_path / "back")]) == 0
    back = load_raw(tmp_path / "back", name="SYN")
    np.testing.assert_allclose(back.features, raw.features)
    for k in raw.locs:
        np.testing.assert_array_equal(back.locs[k], raw.locs[k])
    # explicit direction, and no silent overwrite
    line = _user_error(capsys, ["convert", str(root), str(tmp_path / "byo"), "--to", "byo"])
    assert "already holds" in line and "--force" in line
    assert main(["convert", str(root), str(tmp_path / "byo"), "--to", "byo", "--force"]) == 0


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    line = _user_error(capsys, ["info", str(tmp_path / "nowhere")])
    assert "no dataset found" in line and "features.npy" in line
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "features.npy").write_bytes(b"nope")
    line = _user_error(capsys, ["info", str(tmp_path / "bad")])
    assert "features.npy" in line and "cannot read" in line


def test_download_command(tmp_path, capsys, monkeypatch):
    calls = []

    def fake(name, dest, **kw):
        calls.append((name, dest, kw))
        (dest / name).mkdir(parents=True)
        (dest / name / "res101.mat").write_bytes(b"x")
        return dest / name

    monkeypatch.setattr("zsl_gen.cli.data.download_dataset", fake)
    assert main(["download", "AWA2", "--dir", str(tmp_path), "--url", "http://mirror/", "--no-progress"]) == 0
    name, _, kw = calls[0]
    assert name == "AWA2" and kw["url"] == "http://mirror/" and kw["progress"] is False
    assert "AWA2: " in capsys.readouterr().out
    monkeypatch.setenv("ZSL_DATA_DIR", str(tmp_path / "env"))
    main(["download", "CUB"])
    assert calls[1][1] == tmp_path / "env"


def test_download_command_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dl, "KNOWN_SHA256", {})
    line = _user_error(capsys, ["download", "APY", "--dir", str(tmp_path), "--url", "http://127.0.0.1:9",
                                "--timeout", "2"])
    assert "http://127.0.0.1:9/xlsa17.zip" in line and "by hand" in line
    assert "xlsa17/data/APY/res101.mat" in line


def test_byo_splits_json_name_is_used(tmp_path, capsys):
    raw = make_synthetic(seed=0, n_classes=10, n_unseen=2, n_val_classes=2, feature_dim=8,
                         samples_per_class=6)
    save_byo(raw, tmp_path / "dir_name")
    data = json.loads((tmp_path / "dir_name" / "splits.json").read_text())
    assert data["name"] == "synthetic"
    main(["info", str(tmp_path / "dir_name")])
    assert "dataset synthetic:" in capsys.readouterr().out


def test_a_reader_closing_stdout_early_ends_the_command_quietly():
    # `zsl-data info <dir> | head -1`: more output than the pipe holds, so the write after the close must fail
    code = ("from zsl_gen.cli.common import report_user_errors\n"
            "@report_user_errors\n"
            "def main():\n"
            "    for i in range(200_000):\n"
            "        print('line', i)\n"
            "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""  # no BrokenPipeError traceback, no "Exception ignored" on exit


def test_output_paths_that_are_files_and_bad_seeds_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "afile.txt"
    a_file.write_text("x")
    raw = make_synthetic(n_classes=6, n_unseen=2, n_val_classes=1, samples_per_class=4, feature_dim=8,
                         semantic_dim=3)
    src = tmp_path / "src"
    save_byo(raw, src)
    save_xlsa17(raw, tmp_path / "x")
    att = tmp_path / "x" / "att_splits.mat"
    for argv, message in ((["simulate", "--att-splits", str(att), "--out", str(a_file)], "is a file"),
                          (["simulate", "--att-splits", str(att), "--out", str(tmp_path / "o"), "--seed", "-1"],
                           "--seed must be >= 0"),
                          (["convert", str(src), str(a_file)], "is a file"),
                          (["convert", str(src), str(src)], "the destination is the source directory")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], err
    assert a_file.read_text() == "x"


def test_simulating_from_nan_semantics_blames_the_semantics(tmp_path, capsys):
    import scipy.io

    raw = make_synthetic(n_classes=6, n_unseen=2, n_val_classes=1, samples_per_class=4, feature_dim=8,
                         semantic_dim=3)
    save_xlsa17(raw, tmp_path / "x")
    att = tmp_path / "x" / "att_splits.mat"
    variables = {k: v for k, v in scipy.io.loadmat(att).items() if not k.startswith("__")}
    variables["att"][0, 2] = np.nan  # (A, C): class 3
    scipy.io.savemat(att, variables)
    with pytest.raises(SystemExit) as stop:
        main(["simulate", "--att-splits", str(att), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "key 'att'" in err and "NaN or Inf values (classes 3, 1-based)" in err, err
    assert "'features'" not in err and not (tmp_path / "o" / "res101.mat").exists()


def test_byo_index_beyond_int64_and_a_bom_are_handled(tmp_path, capsys):
    raw = make_synthetic(n_classes=6, n_unseen=2, n_val_classes=1, samples_per_class=4, feature_dim=8,
                         semantic_dim=3)
    save_byo(raw, tmp_path / "d")
    classes = tmp_path / "d" / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbf" + classes.read_bytes())  # saved by an editor that adds a BOM
    assert load_byo(tmp_path / "d").class_names == raw.class_names
    splits = json.loads((tmp_path / "d" / "splits.json").read_text())
    splits["trainval"] = [*splits["trainval"], 2**70]  # save_byo writes the index-list form
    (tmp_path / "d" / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SystemExit) as stop:
        main(["info", str(tmp_path / "d")])
    assert stop.value.code == 2 and "row indices out of range" in capsys.readouterr().err


def test_output_directories_below_a_file_are_one_line(xlsa17_dir, tmp_path, capsys):
    src, _ = xlsa17_dir
    (tmp_path / "afile").write_text("x")
    for argv in (["simulate", "--att-splits", str(src / "att_splits.mat"), "--out", str(tmp_path / "afile" / "sim")],
                 ["convert", str(src), str(tmp_path / "afile" / "byo")]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"{tmp_path / 'afile'} is a file, not a directory" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_convert_and_simulate_never_mix_the_two_formats_in_one_directory(xlsa17_dir, tmp_path, capsys):
    root, raw = xlsa17_dir
    assert main(["convert", str(root), str(tmp_path / "byo")]) == 0
    capsys.readouterr()
    # an xlsa17 dataset written into a bring-your-own directory, even with --force
    line = _user_error(capsys, ["convert", str(root), str(tmp_path / "byo"), "--to", "xlsa17", "--force"])
    assert f"{tmp_path / 'byo' / 'features.npy'}" in line and "another directory" in line
    # a bring-your-own dataset written into an xlsa17 directory, even with --force
    line = _user_error(capsys, ["convert", str(tmp_path / "byo"), str(root), "--to", "byo", "--force"])
    assert f"{root / 'res101.mat'}" in line and "other format" in line
    line = _user_error(capsys, ["simulate", "--att-splits", str(root / "att_splits.mat"), "--out",
                                str(tmp_path / "byo")])
    assert "features.npy" in line and "other format" in line
    assert sorted(p.name for p in (tmp_path / "byo").iterdir()) == sorted(
        ["features.npy", "labels.npy", "semantics.npy", "classes.txt", "splits.json"])


def test_simulate_keeps_a_different_splits_file_unless_forced(xlsa17_dir, tmp_path, capsys):
    root, _ = xlsa17_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "att_splits.mat").write_bytes(b"another dataset's splits")
    line = _user_error(capsys, ["simulate", "--att-splits", str(root / "att_splits.mat"), "--out", str(out)])
    assert "att_splits.mat already exists and differs" in line and "--force" in line
    assert (out / "att_splits.mat").read_bytes() == b"another dataset's splits" and not (out / "res101.mat").exists()
    assert main(["simulate", "--att-splits", str(root / "att_splits.mat"), "--out", str(out), "--force",
                 "--feature-dim", "4"]) == 0
    assert (out / "att_splits.mat").read_bytes() == (root / "att_splits.mat").read_bytes()
    # the same file again: nothing to protect
    assert main(["simulate", "--att-splits", str(root / "att_splits.mat"), "--out", str(out), "--force",
                 "--feature-dim", "4"]) == 0


def test_convert_keeps_the_simulated_note_and_writes_the_named_semantics_file(tmp_path, capsys):
    src = real_file("CUB", "sent_splits.mat")
    assert main(["simulate", "--att-splits", str(src), "--out", str(tmp_path / "sim"), "--feature-dim", "4"]) == 0
    assert main(["convert", str(tmp_path / "sim"), str(tmp_path / "byo"), "--semantics-file", "sent_splits.mat"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "byo")]) == 0
    out = capsys.readouterr().out
    assert "features: simulated features" in out and "semantics 1024-d (sent)" in out
    assert main(["convert", str(tmp_path / "byo"), str(tmp_path / "back"), "--semantics-file",
                 "sent_splits.mat"]) == 0
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["res101.mat", "sent_splits.mat"]
    back = load_raw(tmp_path / "back", name="CUB", semantics_file="sent_splits.mat", semantic_space="sent")
    assert back.features_note.startswith("simulated features") and back.semantics.shape == (200, 1024)
    line = _user_error(capsys, ["convert", str(tmp_path / "byo"), str(tmp_path / "same"), "--features-file",
                                "x.mat", "--semantics-file", "x.mat"])
    assert "give them two names" in line and not (tmp_path / "same").exists()


@pytest.mark.parametrize("extra, named", [
    (["--url", "notaurl"], "url='notaurl' is not a URL"),
    (["--timeout", "0"], "timeout=0.0: the socket timeout must be a number of seconds > 0"),
    (["--timeout", "-1"], "timeout=-1.0"),
])
def test_download_refuses_a_bad_url_or_timeout_in_one_line(tmp_path, capsys, extra, named):
    line = _user_error(capsys, ["download", "CUB", "--dir", str(tmp_path / "d"), *extra])
    assert named in line and not (tmp_path / "d").exists()


def test_flo_is_sentences_and_convert_records_a_stated_semantic_space(tmp_path, capsys):
    """FLO's att_splits.mat holds sentence embeddings and records no space: inferred as such, so a converted copy
    loads with dataset=flo's semantic_space=sent; --semantic-space states the space where inference cannot."""
    raw = make_synthetic(seed=0, n_classes=12, n_unseen=3, n_val_classes=2, feature_dim=8, samples_per_class=6)
    save_xlsa17(raw, tmp_path / "FLO")
    (tmp_path / "FLO" / "att_splits.mat").write_bytes(_without_semantic_space(tmp_path / "FLO" / "att_splits.mat"))
    assert load_raw(tmp_path / "FLO", name="FLO").semantic_space == "sent"
    assert main(["convert", str(tmp_path / "FLO"), str(tmp_path / "flo_byo")]) == 0
    assert load_raw(tmp_path / "flo_byo", name="FLO", semantic_space="sent").semantic_space == "sent"
    assert main(["convert", str(tmp_path / "flo_byo"), str(tmp_path / "w2v"), "--semantic-space", "w2v"]) == 0
    assert load_raw(tmp_path / "w2v", name="X").semantic_space == "w2v"
    capsys.readouterr()


def _without_semantic_space(path) -> bytes:
    import io

    import scipy.io

    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__") and k != "semantic_space"}
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, mat)
    return buffer.getvalue()


def _dir_state(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("to", ["byo", "xlsa17"])
def test_an_interrupted_forced_convert_leaves_the_earlier_files_and_no_temporary_one(xlsa17_dir, tmp_path, capsys,
                                                                                    monkeypatch, to):
    # an interrupted --force used to leave the files written so far beside the earlier run's: a mixed directory
    # that validates as a dataset neither run made
    import signal

    root, raw = xlsa17_dir
    other = make_synthetic(seed=5, n_classes=12, n_unseen=3, n_val_classes=2, feature_dim=16, samples_per_class=10)
    other.name = "SYN"
    src = tmp_path / "other"
    save_byo(other, src) if to == "xlsa17" else save_xlsa17(other, src)
    dst = tmp_path / "dst"
    assert main(["convert", str(root if to == "byo" else save_byo(raw, tmp_path / "byo0")), str(dst),
                 "--to", to]) == 0
    before = _dir_state(dst)
    import zsl_gen.data._io as io_module

    real_fsync, calls = io_module.os.fsync, []

    def sigterm_on_the_last_file(fd):  # every file but the last is written when SIGTERM comes
        calls.append(fd)
        if len(calls) == len(before):
            io_module.os.kill(io_module.os.getpid(), signal.SIGTERM)
        return real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", sigterm_on_the_last_file)
    with pytest.raises(SystemExit) as ei:
        main(["convert", str(src), str(dst), "--to", to, "--force"])
    assert ei.value.code == 128 + signal.SIGTERM and len(calls) == len(before)
    assert _dir_state(dst) == before  # every file the earlier one, no temporary file beside them
    monkeypatch.setattr(io_module.os, "fsync", real_fsync)
    assert main(["convert", str(src), str(dst), "--to", to, "--force"]) == 0
    after = load_raw(dst, name="SYN")
    np.testing.assert_allclose(after.features, other.features, rtol=1e-6)


def test_a_simulate_failing_on_its_second_file_keeps_the_earlier_features(tmp_path, capsys, monkeypatch):
    src = real_file("CUB")
    out = tmp_path / "CUB"
    assert main(["simulate", "--att-splits", str(src), "--out", str(out), "--feature-dim", "4", "--seed", "1"]) == 0
    (out / "att_splits.mat").write_bytes(b"not the one simulated from")  # so that --force copies it again
    before = _dir_state(out)
    import shutil

    def full_disk(fin, fh, *args):
        raise OSError(28, "No space left on device", str(out / "att_splits.mat"))

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)
    with pytest.raises(SystemExit) as ei:
        main(["simulate", "--att-splits", str(src), "--out", str(out), "--feature-dim", "4", "--seed", "2",
              "--force"])
    assert ei.value.code == 2 and "att_splits.mat: could not write it (the disk is full)" in capsys.readouterr().err
    assert _dir_state(out) == before  # res101.mat of seed 1 too, not seed 2's beside the old splits


def test_files_as_one_set_renames_at_the_end_and_cleans_up_when_a_rename_fails(tmp_path):
    from zsl_gen.data._io import atomic_write_text, files_as_one_set

    with files_as_one_set():
        atomic_write_text(tmp_path / "a.txt", "new a")
        with files_as_one_set():  # nested: renamed with the outer block's files
            atomic_write_text(tmp_path / "b.txt", "new b")
        assert not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    (tmp_path / "c.txt").mkdir()  # c's rename would fail: refused before any rename, every temporary goes
    with pytest.raises(OSError, match="c.txt is a directory, where a file goes"):
        with files_as_one_set():
            atomic_write_text(tmp_path / "b.txt", "newer b")
            atomic_write_text(tmp_path / "c.txt", "c")
            atomic_write_text(tmp_path / "d.txt", "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert (tmp_path / "b.txt").read_text() == "new b"


@pytest.mark.parametrize("fmt", ["xlsa17", "byo"])
def test_an_unreadable_data_file_is_named_with_the_chmod_not_called_corrupt(xlsa17_dir, tmp_path, capsys,
                                                                           monkeypatch, fmt):
    # (the tests run as root, for whom chmod 000 changes nothing: the permission check and the read are faked)
    import os as os_module

    root, raw = xlsa17_dir
    if fmt == "byo":
        root = save_byo(raw, tmp_path / "byo")
    victim = root / ("res101.mat" if fmt == "xlsa17" else "features.npy")
    victim.chmod(0o000)
    real_access = os_module.access
    monkeypatch.setattr(os_module, "access", lambda p, mode, *a, **k: False if str(p) == str(victim) and
                        mode & os_module.R_OK else real_access(p, mode, *a, **k))
    line = _user_error(capsys, ["info", str(root)])
    assert line == f"error: {victim}: not readable by this user (permissions 000); make it readable " \
                   f"(chmod a+r {victim}) or ask its owner to"
    # where the check passes but the read is refused all the same (an ACL, a file system's own rules)
    monkeypatch.setattr(os_module, "access", real_access)
    import scipy.io

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(victim))

    monkeypatch.setattr(scipy.io, "loadmat", denied) if fmt == "xlsa17" else monkeypatch.setattr(np, "load", denied)
    line = _user_error(capsys, ["info", str(root)])
    assert "not readable by this user" in line and "corrupt" not in line and "re-download" not in line
