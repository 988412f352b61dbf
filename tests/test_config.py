"""The run config: paper defaults, presets <- YAML <- flags <- --set, run.yaml round trip, and
one-line errors (exit 2 from the CLI) naming the bad key."""

import pytest

from radlads.cli import main
from radlads.config import (CPU_DEMO_MINUTES, PRESET_DIR, cpu_demo_tokens, load_config, preset, preset_names,
                            save_config, to_dict)
from radlads.errors import RadladsError



def test_defaults_follow_radlads():
    cfg = load_config()
    s1, s2 = cfg.stage1, cfg.stage2
    assert (s1.lr, s1.lr_final, s1.schedule, s1.seq_len) == (1e-3, 1e-5, "cosine", 512)
    assert (s1.beta1, s1.beta2, s1.weight_decay, s1.grad_clip) == (0.9, 0.95, 0.0, 1.0)
    assert (s2.lr, s2.schedule, s2.kl_weight, s2.ce_weight) == (1e-5, "constant", 1.0, 0.0)
    assert cfg.stage3.gradient_checkpointing and cfg.stage3.ce_weight == 1.0
    assert cfg.stages == [1, 2] and cfg.student.arch == "rwkv7"


def test_precedence_preset_then_file_then_flags_then_set(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("stage1:\n  tokens: 123456\n  lr: 5.0e-4\nstage2:\n  temperature: 3\n")
    cfg = load_config("gpu-node", str(f), {"stage1": {"lr": 2e-3}}, ["stage2.temperature=2.0", "student.arch=rwkv6"])
    assert cfg.stage1.tokens == 123456  # file over preset
    assert cfg.stage1.batch_size == preset("gpu-node")["stage1"]["batch_size"]  # preset over default
    assert cfg.stage1.lr == 2e-3  # flag over file
    assert cfg.stage2.temperature == 2.0  # --set over file
    assert cfg.student.arch == "rwkv6"


def test_run_yaml_round_trips(tmp_path):
    cfg = load_config("cpu-demo", sets=["stage2.top_k=64", "student.attention_layers=[3, 7]"])
    save_config(cfg, tmp_path / "run.yaml")
    assert to_dict(load_config(config_file=str(tmp_path / "run.yaml"))) == to_dict(cfg)


@pytest.mark.parametrize("name", ["cpu-demo", "gpu-node"])
def test_presets_are_the_packaged_yaml_files(name):
    assert name in preset_names()
    from_file = load_config(config_file=str(PRESET_DIR / f"{name}.yaml"))  # a preset is also a --config file
    assert to_dict(from_file) == to_dict(load_config(name))


def test_cpu_demo_budgets_follow_the_measured_speeds():
    spelled = preset("cpu-demo")
    for n in (1, 2, 3):
        s = spelled[f"stage{n}"]
        assert s["tokens"] == cpu_demo_tokens(n, s["seq_len"], s["batch_size"]), n
        assert s["minutes"] == CPU_DEMO_MINUTES[n], n  # a slower machine stops on time, with fewer tokens


def test_cpu_demo_budget_is_about_an_hour_at_measured_speed():
    from radlads.config import CPU_DEMO_TOK_S

    cfg = load_config("cpu-demo")
    minutes = sum(cfg.stage(n).tokens / CPU_DEMO_TOK_S[n] for n in cfg.stages) / 60
    assert 40 <= minutes <= 60, minutes  # plus a few minutes of loading, validation and export
    steps = [cfg.stage(n).tokens // (cfg.stage(n).batch_size * cfg.stage(n).seq_len) for n in cfg.stages]
    assert all(s >= 20 for s in steps), steps  # enough optimizer steps for the schedule to mean something


@pytest.mark.parametrize("sets,message", [
    (["stage2.temprature=2"], "unknown config key 'stage2.temprature'"),
    (["stage1.lr=fast"], "config key stage1.lr: expected float, got 'fast'"),
    (["stage1.tokens=2.5"], "config key stage1.tokens: expected int"),
    (["stage2.freeze_mlp=maybe"], "config key stage2.freeze_mlp: expected bool"),
    (["stage1=3"], "config key stage1: expected a section"),
    (["stage2.temperature=0"], "stage2.temperature must be > 0"),
    (["stage1.minutes=-5"], "stage1.minutes must be >= 0"),
    (["stage1.lr=2"], r"stage1.lr must be in \(0, 1\]"),
    (["stage3.ce_weight=0", "stage3.kl_weight=0"], "stage3: ce_weight and kl_weight must be >= 0 and not both 0"),
    (["stages=[2, 1]"], "stages must be an increasing list"),
    (["student.arch=mamba"], "student.arch must be rwkv7 or rwkv6"),
    (["dtype=fp8"], "dtype must be fp32 or bf16"),
    (["stage1.tokens"], "--set takes key.path=value"),
])
def test_bad_values_name_the_key(sets, message):
    with pytest.raises(RadladsError, match=message):
        load_config(sets=sets)


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  tokens: [1\n")
    with pytest.raises(RadladsError, match="cannot parse"):
        load_config(config_file=str(bad))
    bad.write_text("stage1:\n  tokenz: 5\n")
    with pytest.raises(RadladsError, match="unknown config key 'stage1.tokenz'"):
        load_config(config_file=str(bad))
    with pytest.raises(RadladsError, match="config file not found"):
        load_config(config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(RadladsError, match="unknown preset 'laptop'"):
        load_config("laptop")


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("extra,message", [
    (["--set", "stage2.temprature=2"], "unknown config key 'stage2.temprature'"),
    (["--stage1-tokens", "0"], "stage1.tokens must be >= 1, got 0"),
    (["--stage2-lr=-1e-5"], "stage2.lr must be in (0, 1]"),
    (["--set", "stage1.batch_size=two"], "config key stage1.batch_size: expected int, got 'two'"),
    (["--preset", "laptop"], "unknown preset 'laptop'"),
    (["--config", "missing.yaml"], "config file not found: missing.yaml"),
])
def test_cli_config_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    for command in (["convert"], ["train", "--stage", "2", "--student", str(tmp_path)]):
        line = one_error_line(capsys, command + ["--teacher", "nowhere", "--out", str(tmp_path / "o")] + extra)
        assert line.startswith(f"radlads {command[0]}: error: ") and message in line
        assert not (tmp_path / "o").exists()  # nothing was written before the config was valid


def test_cli_stage_list_is_checked(tmp_path, capsys):
    line = one_error_line(capsys, ["convert", "--teacher", "t", "--out", str(tmp_path / "o"), "--stages", "1,4"])
    assert line == "radlads convert: error: stages must be an increasing list drawn from 1, 2, 3, got [1, 4]"


def test_cli_flags_reach_the_config(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("radlads.convert.convert", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or True)
    assert main(["convert", "--teacher", "t", "--out", str(tmp_path), "--preset", "cpu-demo", "--stage1-tokens", "2e6",
                 "--stage1-minutes", "7.5", "--stage2-seq-len", "256", "--arch", "rwkv6", "--attention-layers", "1,3",
                 "--stages", "1,2,3", "--dtype", "fp32", "--resume", "--fsdp", "--compile"]) == 0
    cfg = seen["cfg"]
    assert cfg.stage1.tokens == 2_000_000 and cfg.stage1.minutes == 7.5
    assert cfg.stage2.seq_len == 256 and cfg.stages == [1, 2, 3]
    assert cfg.student.arch == "rwkv6" and cfg.student.attention_layers == [1, 3]
    assert cfg.dtype == "fp32" and cfg.fsdp and cfg.compile and seen["resume"]
    assert cfg.stage2.tokens == preset("cpu-demo")["stage2"]["tokens"]  # untouched keys keep the preset
