"""`radlads bench`: report shape, constant student state vs growing teacher KV, skips, bad inputs."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radlads import bench, scoring  # noqa: E402
from radlads.cli import main  # noqa: E402
from helpers import cli_error, save_tiny_teacher, tiny_teacher  # noqa: E402
from radlads.transfer import build_student  # noqa: E402

CONTEXTS = [16, 48]


@pytest.fixture(scope="module")
def folders(tiny_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    short = save_tiny_teacher(root / "short", "llama", seed=0, max_position_embeddings=32)
    return dict(tiny_folders, short=short, root=root)


@pytest.fixture(scope="module")
def report(folders):
    out = folders["root"] / "bench.json"
    png = folders["root"] / "bench.png"
    rc = main(["bench", folders["student"], "--vs", folders["teacher"], "--contexts", ",".join(map(str, CONTEXTS)),
               "--decode-tokens", "3", "--threads", "1", "--in-process", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    return json.loads(out.read_text()), png


def test_json_has_every_model_and_context(report):
    data, _ = report
    assert data["contexts"] == CONTEXTS and data["decode_tokens"] == 3
    assert [m["label"] for m in data["models"]] == ["student", "teacher"]
    assert [m["recurrent"] for m in data["models"]] == [True, False]
    for m in data["models"]:
        assert [r["context"] for r in m["rows"]] == CONTEXTS
        for r in m["rows"]:
            assert r["skipped"] is None
            assert len(r["decode_ms"]) == 3
            assert r["decode_ms_per_token"] == pytest.approx(sorted(r["decode_ms"])[1])  # the median
            assert r["prefill_tokens_per_s"] == pytest.approx(r["context"] / r["prefill_s"])
            assert r["peak_rss_bytes"] >= 50 * 2**20  # a python process with torch loaded
            assert r["state_bytes"] > 0


def test_student_state_is_constant_and_teacher_kv_grows(report):
    student, teacher = report[0]["models"]
    assert len({r["state_bytes"] for r in student["rows"]}) == 1
    short, long = teacher["rows"]
    # K and V for 2 layers x 2 KV heads x 16 dims, fp32, one entry per cached token.
    per_token = 2 * 2 * 2 * 16 * 4
    assert short["state_bytes"] == per_token * CONTEXTS[0]
    assert long["state_bytes"] == per_token * CONTEXTS[1]


def test_summary_and_plot(report, capsys):
    data, png = report
    summary = data["summary"]
    assert set(summary["flatness"]) == {"student", "teacher"}
    assert all(v >= 1.0 for v in summary["flatness"].values())
    assert summary["speedup"]["context"] == CONTEXTS[-1]
    assert summary["speedup"]["state_bytes_ratio"] == pytest.approx(
        data["models"][1]["rows"][-1]["state_bytes"] / data["models"][0]["rows"][-1]["state_bytes"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_beyond_its_context_is_skipped_in_a_worker_process(folders, tmp_path, capsys):
    # The real (subprocess) path: one worker measures 16; 48 is skipped without starting another.
    out = tmp_path / "b.json"
    rc = main(["bench", folders["short"], "--contexts", "48,16", "--decode-tokens", "2", "--threads", "1",
               "--json", str(out)])
    assert rc == 0
    (model,) = json.loads(out.read_text())["models"]
    measured, skipped = model["rows"]
    assert measured["context"] == 16 and measured["skipped"] is None
    assert measured["peak_rss_bytes"] >= measured["rss_before_bytes"] > 0
    assert skipped["context"] == 48 and "max_position_embeddings 32" in skipped["skipped"]
    assert model["context_limit"] == 32
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "note: short skipped at 48" in captured.err


def test_past_context_limit_times_the_teacher_there_and_marks_it(folders, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", folders["short"], "--contexts", "16,48", "--decode-tokens", "2", "--threads", "1",
               "--in-process", "--past-context-limit", "--json", str(out)])
    assert rc == 0
    short, past = json.loads(out.read_text())["models"][0]["rows"]
    assert short["skipped"] is None and short["past_context_limit"] is False
    assert past["skipped"] is None and past["past_context_limit"] is True
    assert past["state_bytes"] > short["state_bytes"]  # its KV cache keeps growing past the limit
    assert "48 (past its context limit)" in capsys.readouterr().out


def test_paired_decode_alternates_steps_and_takes_the_median_ratio(folders):
    student = build_student(tiny_teacher("llama", seed=0), "rwkv7")
    teacher = tiny_teacher("llama", seed=1)
    calls = []
    for name, m in (("student", student), ("teacher", teacher)):
        m.register_forward_pre_hook(lambda mod, args, kwargs, name=name: calls.append(
            (name, kwargs["input_ids"].shape[1])), with_kwargs=True)
    paired = bench.paired_decode(student, teacher, context=24, steps=4)
    steps = [name for name, n in calls if n == 1]
    assert steps == ["student", "teacher", "teacher", "student"] * 2  # one of each per pair, first alternating
    assert [n for name, n in calls if n > 1] == [bench.WARMUP_TOKENS, bench.WARMUP_TOKENS, 24, 24]
    assert len(paired["decode_ms"]) == len(paired["vs_decode_ms"]) == len(paired["ratios"]) == 4
    assert paired["ratios"] == pytest.approx([b / a for a, b in zip(paired["decode_ms"], paired["vs_decode_ms"])])
    assert paired["decode"] == pytest.approx(sum(sorted(paired["ratios"])[1:3]) / 2)  # median of 4


def test_paired_flag_runs_one_worker_with_both_models(folders, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", folders["student"], "--vs", folders["teacher"], "--contexts", "16", "--decode-tokens", "3",
               "--threads", "1", "--paired", "--json", str(out)])
    assert rc == 0
    paired = json.loads(out.read_text())["summary"]["paired"]
    assert paired["context"] == 16 and paired["steps"] == 3 and len(paired["ratios"]) == 3
    assert paired["decode"] == pytest.approx(sorted(paired["ratios"])[1])
    assert "paired decode at context 16" in capsys.readouterr().out


def test_cache_nbytes_hybrid_student_grows_only_by_its_attention_layer():
    student = build_student(tiny_teacher("llama"), "rwkv7", attention_layers=[1])
    sizes = []
    for n in (8, 24):
        _, cache = scoring.forward_cached(student, torch.randint(3, 300, (1, n)))
        sizes.append(bench.cache_nbytes(cache))
    kv_per_token = 2 * 2 * 16 * 4  # one layer's K and V
    assert sizes[1] - sizes[0] == kv_per_token * 16


def test_peak_rss_sees_an_allocation_inside_the_block():
    with bench.PeakRSS() as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert mem.peak - mem.start_rss >= 48 * 2**20


@pytest.mark.parametrize("argv,message", [
    (["--contexts", "512,abc"], "--contexts takes comma-separated"),
    (["--contexts", "0,512"], "--contexts values must be positive"),
    (["--decode-tokens", "-4"], "--decode-tokens must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--json", "/no/such/dir/out.json"], "does not exist"),
    (["--paired"], "--paired compares two models"),
])
def test_bad_arguments_are_one_line_errors(folders, capsys, argv, message):
    assert message in cli_error(capsys, ["bench", folders["student"], "--in-process"] + argv)


def test_missing_model_folder_is_one_line_error(tmp_path, capsys):
    assert "nope" in cli_error(capsys, ["bench", str(tmp_path / "nope"), "--contexts", "16"])
