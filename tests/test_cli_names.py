"""The names users know: transformers' TrainingArguments / TRL / PEFT names as aliases of kormed's options (YAML and
flags alike), one option given under two names refused, an unknown key or flag answered with the closest known
name, `kormed --version` and `kormed env`. Runs the command line up to the config (the run function is replaced)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

import kormed.cli as cli
from kormed.config import CONFIG_SECTIONS, FOREIGN_OPTIONS, declared_aliases, section_class
from kormed.flags import field_flags

COMMANDS_WITH_ALIASES = [key for key, command in cli.COMMANDS.items()
                         if declared_aliases(section_class(command.section))]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace every run/show function: the run records the config it was given."""
    seen: dict[str, Any] = {}

    def function(spec: str) -> Any:
        def run(cfg: Any, **kwargs: Any) -> None:
            seen["cfg"] = cfg

        return (lambda result, cfg: None) if spec.split(":")[1].startswith("show") else run

    monkeypatch.setattr(cli, "_function", function)
    # `quantize: 4bit` (`load_in_4bit`) checks that bitsandbytes imports (seconds of torch; tested in test_qlora)
    monkeypatch.setattr("kormed.quantization.require_bitsandbytes", lambda *args, **kwargs: None)
    return seen


@pytest.fixture(scope="module")
def click_app() -> Any:
    return typer.main.get_command(cli.app)


def _run(click_app: Any, captured: dict[str, Any], key: tuple[str, str], args: list[str]) -> Any:
    captured.clear()
    code = click_app.main([*(p for p in key if p), *args], prog_name="kormed", standalone_mode=False)
    assert "cfg" in captured, f"exit code {code}"
    return captured["cfg"]


def _fails(click_app: Any, capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = click_app.main(args, prog_name="kormed", standalone_mode=False)
    out = capsys.readouterr()
    assert code == 2 and not out.out, (code, out)
    assert len(out.err.strip().splitlines()) == 1, out.err  # one line: no usage block, no traceback
    return out.err


# A value other than the default that each aliased option accepts.
VALUES = {"scheduler": "linear", "optim": "adamw_torch_fused", "report_to": ["none"], "target_modules": ["q_proj"],
          "early_stopping_metric": "eval_qa_loss", "model": "some/model", "output": "out-dir", "dtype": "float32"}


def _value(field: str, tp: Any, default: Any, translation: dict[Any, Any] | None) -> tuple[Any, Any]:
    """(the alias's value, the option's value it means)."""
    if translation is not None:
        alias_value = next(k for k, v in translation.items() if v != default)
        return alias_value, translation[alias_value]
    if field in VALUES:
        return VALUES[field], VALUES[field]
    if tp is bool:
        return (not default,) * 2
    if tp is int:
        return (3 if default is None else default + 1,) * 2
    if tp is float:
        return (0.25 if not default else default / 2,) * 2
    raise AssertionError(f"no test value for {field} ({tp})")


def _aliases(key: tuple[str, str]) -> list[tuple[Any, str, Any, Any]]:
    """(field flag, alias, alias value, option value) for every alias of the command's section."""
    out = []
    for ff in field_flags(section_class(cli.COMMANDS[key].section)):
        for name, translation in ff.known_as:
            out.append((ff, name, *_value(ff.path[-1], ff.tp, ff.default, translation)))
    return out


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def _arg(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):  # HfArgumentParser's off switch of `--x_y` is `--no_x_y`
        return [flag if value else f"--no{'_' if '_' in flag else '-'}{flag[2:]}"]
    if isinstance(value, list):
        return [flag, ",".join(value)]
    return [flag, str(value)]


@pytest.mark.parametrize("key", COMMANDS_WITH_ALIASES, ids=lambda k: " ".join(p for p in k if p))
def test_every_alias_from_yaml_and_from_its_flag_sets_the_option(click_app, captured, key, tmp_path) -> None:
    section = cli.COMMANDS[key].section
    for ff, name, alias_value, value in _aliases(key):
        want = _set(section_class(section)(), ff.path, value)
        # YAML: the alias at the top of the section (as TrainingArguments are flat) and beside its field
        places = [{name: alias_value}]
        if len(ff.path) > 1:
            places.append({ff.path[0]: {name: alias_value}})
        for values in places:
            file = tmp_path / "c.yaml"
            file.write_text(yaml.safe_dump({section: values}), encoding="utf-8")
            cfg = _run(click_app, captured, key, ["--config", str(file)])
            assert cfg == want, f"{section}: YAML {values}"
        # the flag, as HfArgumentParser spells it (`_`) and with `-`
        for flag in {f"--{name}", f"--{name.replace('_', '-')}"}:
            cfg = _run(click_app, captured, key, _arg(flag, alias_value))
            assert _get(cfg, ff.path) == _get(want, ff.path), f"{flag}"
            assert cfg == want, flag


def _set(cfg: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _set(getattr(cfg, path[0]), path[1:], value)})


def test_a_trl_style_file_gives_the_config_of_kormed_names(click_app, captured, tmp_path) -> None:
    hf = {"learning_rate": 1e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
          "num_train_epochs": 3, "output_dir": "out", "lr_scheduler_type": "linear", "warmup_ratio": 0.1,
          "weight_decay": 0.01, "logging_steps": 5, "save_steps": 20, "eval_steps": 20, "max_steps": 60,
          "seed": 7, "bf16": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
          "lora_target_modules": ["q_proj", "v_proj"], "model_name_or_path": "google/medgemma-4b-it",
          "max_seq_length": 1024}
    ours = {"output": "out", "model": "google/medgemma-4b-it", "max_length": 1024,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
            "train": {"lr": 1e-4, "batch_size": 4, "grad_accum": 8, "epochs": 3, "scheduler": "linear",
                      "warmup_ratio": 0.1, "weight_decay": 0.01, "logging_steps": 5, "save_steps": 20,
                      "eval_steps": 20, "max_steps": 60, "seed": 7, "dtype": "bfloat16"}}
    (tmp_path / "hf.yaml").write_text(yaml.safe_dump({"cpt": hf}), encoding="utf-8")
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump({"cpt": ours}), encoding="utf-8")
    by_hf = _run(click_app, captured, ("train", "cpt"), ["--config", str(tmp_path / "hf.yaml")])
    by_ours = _run(click_app, captured, ("train", "cpt"), ["--config", str(tmp_path / "ours.yaml")])
    assert by_hf == by_ours != section_class("cpt")()
    flags = ["--learning_rate", "1e-4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "8",
             "--num_train_epochs", "3", "--output_dir", "out", "--lr_scheduler_type", "linear", "--warmup_ratio",
             "0.1", "--weight_decay", "0.01", "--logging_steps", "5", "--save_steps", "20", "--eval_steps", "20",
             "--max_steps", "60", "--seed", "7", "--bf16", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout",
             "0.1", "--lora_target_modules", "q_proj,v_proj", "--model_name_or_path", "google/medgemma-4b-it",
             "--max_seq_length", "1024"]
    assert _run(click_app, captured, ("train", "cpt"), flags) == by_ours


def test_an_option_under_two_names_is_an_error_naming_both(click_app, capsys, tmp_path) -> None:
    cases = [
        ({"learning_rate": 1e-4, "train": {"lr": 2e-4}}, ("cpt.learning_rate", "cpt.train.lr")),
        ({"train": {"learning_rate": 1e-4, "lr": 2e-4}}, ("cpt.train.learning_rate", "cpt.train.lr")),
        ({"lora_alpha": 8, "lora": {"lora_alpha": 16}}, ("cpt.lora_alpha", "cpt.lora.lora_alpha")),
        ({"output_dir": "a", "output": "b"}, ("cpt.output_dir", "cpt.output")),
    ]
    for values, names in cases:
        file = tmp_path / "c.yaml"
        file.write_text(yaml.safe_dump({"cpt": values}), encoding="utf-8")
        out = _fails(click_app, capsys, ["train", "cpt", "--config", str(file)])
        assert all(f"`{n}`" in out for n in names) and "c.yaml" in out, out
    for args, names in [
        (["--learning-rate", "1e-4", "--lr", "2e-4"], ("--learning-rate", "--lr")),
        (["--train.lr", "2e-4", "--learning_rate", "1e-4"], ("--learning_rate", "--train.lr")),
        (["--max_steps", "3", "--train.max-steps", "4"], ("--max_steps", "--train.max-steps")),
        (["--bf16", "--dtype", "float32"], ("--bf16", "--dtype")),
    ]:
        out = _fails(click_app, capsys, ["train", "cpt", *args])
        assert all(n in out for n in names) and "same option" in out, out


def test_an_unknown_key_is_answered_with_the_closest_known_name(click_app, capsys, tmp_path) -> None:
    cases = [
        ({"lerning_rate": 1e-4}, "did you mean `learning_rate`?"),
        ({"lr": 1e-4}, "did you mean `train.lr`?"),
        ({"train": {"lrr": 1e-4}}, "did you mean `lr`?"),
        ({"fp16": True}, "transformers' TrainingArguments option `fp16`, which kormed does not take"),
        ({"packing": True}, "TRL's option `packing`, which kormed does not take"),
    ]
    for values, answer in cases:
        file = tmp_path / "c.yaml"
        file.write_text(yaml.safe_dump({"cpt": values}), encoding="utf-8")
        out = _fails(click_app, capsys, ["train", "cpt", "--config", str(file)])
        assert answer in out and "c.yaml" in out, out


def test_an_unknown_flag_is_answered_in_one_line_with_the_closest_known_one(click_app, capsys) -> None:
    assert "did you mean --learning-rate?" in _fails(click_app, capsys, ["train", "cpt", "--lerning-rate", "1e-4"])
    assert "did you mean --lora.alpha?" in _fails(click_app, capsys, ["train", "sft", "--lora.alpah", "8"])
    assert "did you mean --version?" in _fails(click_app, capsys, ["--versoin"])
    out = _fails(click_app, capsys, ["train", "cpt", "--fp16"])
    assert "--fp16" in out and "which kormed does not take" in out and "dtype" in out, out
    out = _fails(click_app, capsys, ["eval", "kormedmcqa", "--zzzzzzzz", "1"])
    assert "no such option --zzzzzzzz in `kormed eval kormedmcqa`" in out, out


def test_help_and_config_show_list_the_aliases() -> None:
    out = CliRunner().invoke(cli.app, ["train", "cpt", "--help"], env={"COLUMNS": "250"}).output
    for needle in ("--learning-rate", "--per-device-train-batch-size", "--gradient-accumulation-steps",
                   "--num-train-epochs", "--output-dir", "--lora-alpha", "--bf16"):
        assert needle in out, needle
    shown = CliRunner().invoke(cli.app, ["config", "show", "cpt"]).output
    line = next(ln for ln in shown.splitlines() if ln.strip().startswith("lr:"))
    assert "also learning_rate" in line, line
    line = next(ln for ln in shown.splitlines() if ln.strip().startswith("dtype:"))
    assert "bf16 (true: bfloat16, false: float32)" in line, line


@pytest.mark.parametrize("section", list(CONFIG_SECTIONS))
def test_every_alias_names_one_option_and_no_field_hides_it(section) -> None:
    """An alias declared twice, or one that a section's own field of that name would shadow, would set the wrong
    option without a word."""
    cls = section_class(section)
    paths: dict[str, tuple[str, ...]] = {}
    for name, path, _ in declared_aliases(cls):
        assert paths.setdefault(name, path) == path, f"{section}: {name} names {paths[name]} and {path}"
    own = {f.name for f in dataclasses.fields(cls)}
    for name, path in paths.items():
        assert name not in own or path == (name,), f"{section}: field {name} hides the alias of {path}"
        assert name not in FOREIGN_OPTIONS, name


def test_the_foreign_names_are_options_of_the_library_named() -> None:
    """FOREIGN_OPTIONS is written out (no transformers import on an error path): each name must be a real option."""
    pytest.importorskip("trl")
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback, TrainingArguments
    from trl import ModelConfig, SFTConfig

    fields = {
        "transformers": {f.name for f in dataclasses.fields(TrainingArguments)},
        "trl": {f.name for cls in (SFTConfig, ModelConfig) for f in dataclasses.fields(cls)},
        "peft": {f.name for f in dataclasses.fields(LoraConfig)},
        "callback": set(inspect.signature(EarlyStoppingCallback).parameters),
    }
    for name, (library, _) in FOREIGN_OPTIONS.items():
        assert name in fields[library], f"{name} is not an option of {library}"
    # names of earlier releases, still in most tutorials: TRL's SFTConfig before `max_length`, transformers 4's
    # warmup fraction (5 reads a `warmup_steps` below 1 as one)
    retired = {"max_seq_length", "warmup_ratio"}
    for section in CONFIG_SECTIONS:  # and each alias is a name one of them uses
        for name, _, _ in declared_aliases(section_class(section)):
            assert name in retired or any(name in names for names in fields.values()), name


def test_version_prints_the_installed_version_without_importing_torch() -> None:
    code = ("import sys, kormed.cli\n"
            "try:\n    kormed.cli.main(['--version'])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]\n"
            "print('heavy', heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"kormed {importlib.metadata.version('kormed')}", result.stdout


def test_env_reports_versions_device_and_cpu_features() -> None:
    from kormed.env_cli import cpu_model, package_version
    from kormed.precision import cpu_flags, cpu_has_native_bf16

    result = CliRunner().invoke(cli.app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.output)
    assert env["kormed"] == importlib.metadata.version("kormed")
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "transformers", "peft", "datasets", "accelerate"):
        assert env["packages"][name] == importlib.metadata.version(name)
    for name in ("trl", "liger-kernel", "bitsandbytes", "llama-cpp-python", "lm-eval"):
        assert env["optional_packages"][name] == package_version(name)
    assert package_version("kormed-no-such-distribution") == "not installed"
    import torch

    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert env["cuda_device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["cpu_features"] == {f: f in cpu_flags() for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                                 "amx_tile", "bf16")}
    assert env["cpu_native_bf16"] == cpu_has_native_bf16()
    assert env["os"] and env["cpu"] and env["ram_gib"] > 0
    text = CliRunner().invoke(cli.app, ["env"]).output
    for label in ("kormed:", "python:", "torch:", "transformers:", "peft:", "datasets:", "accelerate:", "trl:",
                  "liger-kernel:", "bitsandbytes:", "llama-cpp-python:", "lm-eval:", "device:", "cpu:",
                  "cpu features:", "cpu native bf16:", "os:", "ram:"):
        assert any(line.startswith(label) for line in text.splitlines()), label
    assert cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: avx2\n") \
        == "Intel(R) Xeon(R) Platinum 8480+"


def test_docs_quote_the_new_commands() -> None:
    root = Path(cli.repo_root())
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "kormed env" in readme and "kormed --version" in readme
    assert (root / "docs" / "commands" / "env.md").is_file()



def test_a_value_that_looks_like_a_flag_is_not_read_as_one(click_app, captured) -> None:
    cfg = _run(click_app, captured, ("train", "cpt"), ["--data", "--lr", "--learning_rate", "1e-3", "--no_bf16"])
    assert cfg.data == "--lr" and cfg.train.lr == 1e-3 and cfg.train.dtype == "float32"
