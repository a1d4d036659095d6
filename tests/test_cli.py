"""The `pakd` command's surface: help texts, `python -m pakd_hf`, flags checked before any work."""

import subprocess
import sys
from pathlib import Path

import pytest

from pakd_hf.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("validate", "compress", "ablate", "benchmark", "export", "card", "push")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_has_a_description_argument_help_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example:\n  pakd " + command in text
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert sub.description and len(sub.description) > 40
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.dest} has no help"


def test_python_dash_m_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "pakd_hf", "validate", str(ROOT / "recipes" / "examples" / "tiny-bert-prune.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "ok: 'tiny-bert-prune'" in proc.stdout


def test_help_and_validate_do_not_import_torch():
    # `pakd --help` and `pakd validate` answer in a fraction of a second: importing torch (about
    # a second, more on a cold disk) is left to the commands that load a model.
    code = ("import sys\n"
            "from pakd_hf.cli import main\n"
            "for argv in (['--help'], ['compress', '--help'], ['validate', sys.argv[1]]):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, (argv, exc.code)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_push_to_hub_without_an_id_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", str(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml"), "--output-dir", str(out),
                 "--push-to-hub"]) == 2
    err = capsys.readouterr().err
    assert "--hub-model-id" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_benchmark_of_a_folder_without_a_tokenizer_says_how_to_add_one(tmp_path, capsys):
    from toy import tiny_bert

    for name in ("teacher", "student"):
        tiny_bert(layers=1).save_pretrained(tmp_path / name)
    capsys.readouterr()  # the save's progress bars
    assert main(["benchmark", str(tmp_path / "teacher"), str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer.save_pretrained(folder)" in err


def test_the_hub_id_has_one_name_in_every_spelling():
    parser = build_parser()
    for spelling in ("--hub-model-id", "--hub_model_id", "--repo-id"):
        args, rest = parser.parse_known_args(["compress", "r.yaml", "--output-dir", "o", "--push_to_hub", spelling, "me/x"])
        assert (args.push_to_hub, args.hub_model_id, rest) == (True, "me/x", [])
        args = parser.parse_args(["push", "folder", spelling, "me/x"])
        assert args.repo_id == "me/x"
