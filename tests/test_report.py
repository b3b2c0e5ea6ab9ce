"""zsl-report: mean ± std over seeds, grouping, Markdown/CSV output, bad input."""

import csv
import json

import pytest

from zsl_gen.cli.report import main


def write_result(path, *, seed, method="cvae", dataset="CUB", h=50.0, t1=60.0):
    path.mkdir(parents=True)
    record = {"method": method, "seed": seed, "dataset": {"name": dataset, "semantic_space": "att"},
              "results": {"paper": {"gzsl": {"S": 60.0, "U": 40.0, "H": h + 2}, "zsl": {"T1": t1 + 1}},
                          "val": {"gzsl": {"S": 58.0, "U": 38.0, "H": h}, "zsl": {"T1": t1}}}}
    (path / "results.json").write_text(json.dumps(record))


def test_mean_std_per_method_and_selection(tmp_path, capsys):
    for seed, h in enumerate([40.0, 50.0, 60.0]):
        write_result(tmp_path / "multi" / str(seed), seed=seed, h=h)
    write_result(tmp_path / "multi" / "3", seed=0, method="fclswgan", h=30.0)
    main([str(tmp_path / "multi"), "--md", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert "| CUB | cvae | att | val | 3 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 10.00 |" in out
    assert "| CUB | fclswgan | att | val | 1 |" in out and "paper (optimistic)" in out
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    cvae_val = next(r for r in rows if r["method"] == "cvae" and r["selection"] == "val")
    assert float(cvae_val["H_mean"]) == 50.0 and float(cvae_val["H_std"]) == 10.0
    assert cvae_val["seeds"] == "0 1 2"
    assert (tmp_path / "r.md").read_text().startswith("| dataset |")


def test_paper_of_a_last_epoch_method_is_not_labelled_optimistic(tmp_path, capsys):
    write_result(tmp_path / "multi" / "0", seed=0, method="cadavae")
    write_result(tmp_path / "multi" / "1", seed=0, method="fclswgan")
    record = json.loads((tmp_path / "multi" / "0" / "results.json").read_text())
    record["results"]["paper"].update(optimistic=False, rule="last", chosen_on="fixed")
    (tmp_path / "multi" / "0" / "results.json").write_text(json.dumps(record))
    main([str(tmp_path / "multi")])
    out = capsys.readouterr().out
    assert "| CUB | cadavae | att | paper | 1 |" in out  # CADA-VAE's last epoch: nothing chosen on test
    assert "| CUB | fclswgan | att | paper (optimistic) | 1 |" in out


def test_no_results_and_corrupt_results_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    assert "no results.json under" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{truncated")
    with pytest.raises(SystemExit):
        main([str(bad)])
    err = capsys.readouterr().err
    assert "results.json: not valid JSON" in err and "Traceback" not in err
    (bad / "results.json").write_text(json.dumps({"method": "x"}))
    with pytest.raises(SystemExit):
        main([str(bad)])
    assert "not a zsl-train results.json (missing field" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["results"]["val"]["gzsl"].update(H="abc"), "`results.val.gzsl.H` is 'abc', not a percentage"),
    (lambda r: r["results"]["paper"]["zsl"].update(T1=None), "`results.paper.zsl.T1` is None"),
    (lambda r: r["results"]["val"]["gzsl"].update(S=250.0), "`results.val.gzsl.S` is 250.0"),
    (lambda r: r.update(seed=[0]), "`seed` is [0], not a non-negative integer"),
    (lambda r: r.update(results={}), "`results` holds no selection"),
    (lambda r: r.update(results=[1]), "not a zsl-train results.json"),
])
def test_a_damaged_results_json_is_one_line_naming_the_field(tmp_path, capsys, edit, message):
    write_result(tmp_path / "run", seed=0)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    edit(record)
    (tmp_path / "run" / "results.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--md", str(tmp_path / "r.md")])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], captured.err
    assert str(tmp_path / "run" / "results.json") in lines[0] and not (tmp_path / "r.md").exists()


def test_a_run_named_twice_counts_once_and_a_directory_output_is_refused(tmp_path, capsys):
    write_result(tmp_path / "run", seed=0)
    main([str(tmp_path / "run"), str(tmp_path / "run" / "results.json")])
    assert "| CUB | cvae | att | val | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--md", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--md {tmp_path}: is a directory" in err, err
