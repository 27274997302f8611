"""--config FILE for every command (issue 30, point 6): keys are the flag names, the command line overrides the file,
--print-config prints what resolves, a run writes config.yaml that --config reads back, and a bad file is one line
naming it and the key (exit 2). Nothing in a file runs (safe YAML)."""

import json

import pytest
import yaml
from tiny_runs import CROP, SIZE, assert_one_line_error

COMMANDS = ["train-teacher", "distill", "evaluate", "export", "translate", "fid-stats", "bench-deploy", "demo", "study"]


def test_every_command_takes_a_config_file_and_prints_what_resolves(run_cli, capsys):
    for command in COMMANDS:
        code, out, err = run_cli([command, "--help"])
        assert code == 0 and "--config" in out and "--print-config" in out, (command, err)


def test_flags_on_the_command_line_override_the_file(tmp_path, run_cli):
    config = tmp_path / "teacher.yaml"
    config.write_text("crop-size: 64\nload_size: 72\n--ngf: 8\nsteps: 3\nflip: false\n")
    code, out, err = run_cli(["train-teacher", "--config", config, "--steps", 5, "--print-config"])
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["crop-size"] == 64 and resolved["load-size"] == 72 and resolved["ngf"] == 8
    assert resolved["steps"] == 5 and resolved["flip"] is False and resolved["lr"] == 0.0002
    (tmp_path / "export.json").write_text(json.dumps({"format": "onnx", "out": "g.onnx", "size": 64}))
    code, out, _ = run_cli(["export", "x.pt", "--config", tmp_path / "export.json", "--print-config"])
    assert code == 0 and {"format": "onnx", "out": "g.onnx", "size": 64}.items() <= yaml.safe_load(out).items()


def test_a_run_writes_its_config_and_resumes_from_it(tmp_path, root, run_cli):
    out = tmp_path / "run"
    flags = ["--dataroot", root, "--load-size", SIZE, "--crop-size", CROP, "--ngf", 4, "--ndf", 8, "--workers", 0,
             "--batch-size", 2, "--no-progress", "--sample-every", 0]  # fmt: skip
    code, _, err = run_cli(["train-teacher", *flags, "--out-dir", out, "--steps", 2])
    assert code == 0, err
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["crop-size"] == CROP and written["steps"] == 2 and written["out-dir"] == str(out)
    code, _, err = run_cli(["train-teacher", "--config", out / "config.yaml", "--steps", 3, "--resume"])
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crop-sise: 64\n", "'crop-sise' is not a flag of this command; nearest: --crop-size"),
        ("steps: abc\n", "'steps' (--steps) must be an integer, got 'abc'"),
        ("lr: true\n", "'lr' (--lr) must be a number, got True"),
        ("flip: 1\n", "'flip' (--flip) must be true or false, got 1"),
        ("- 1\n- 2\n", "must hold a mapping of flag names to values, not a list"),
        ("a: [1\n", "is not YAML or JSON at line"),
        ("!!python/object/apply:os.system [touch PWNED]\n", "is not YAML or JSON"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, run_cli, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, _, err = run_cli(["train-teacher", "--config", config, "--out-dir", tmp_path / "run"])
    assert_one_line_error(code, err, 2, f"--config {config}", message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()
    code, _, err = run_cli(["train-teacher", "--config", tmp_path / "missing.yaml"])
    assert_one_line_error(code, err, 2, f"--config {tmp_path / 'missing.yaml'}: cannot read it")
