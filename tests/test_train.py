"""Training stages on a tiny teacher: each loss falls, stage 1 touches only the time-mix,
freeze_mlp freezes, NaN stops cleanly; the loss functions and the lr schedule on their own."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from radlads.config import load_config
from radlads.errors import RadladsError
from radlads import losses
from radlads.losses import attention_alignment_loss, distillation_kl, next_token_ce
from helpers import tiny_teacher, tiny_tokenizer, write_word_corpus
from radlads.objectives import TeacherAttentionTap, time_mix_parameter_names
from radlads.train import lr_at, total_steps, train_stage
from radlads.transfer import build_student


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly".split()


def write_corpus(path):
    return write_word_corpus(path, WORDS, n_docs=120, stride=7, min_words=12, extra_words=9)


def config(tmp_path, **stage_overrides):
    overrides = {
        "teacher": "tiny", "out": str(tmp_path / "run"), "stages": [1, 2, 3], "eval_every": 4, "save_every": 4,
        "data": {"spec": str(write_corpus(tmp_path / "corpus.jsonl")), "valid_sequences": 2, "valid_fraction": 0.1},
        "stage1": {"tokens": 16 * 4 * 32, "seq_len": 32, "batch_size": 4, "warmup_steps": 2, "lr": 3e-3},
        "stage2": {"tokens": 12 * 4 * 32, "seq_len": 32, "batch_size": 4, "lr": 3e-3},
        "stage3": {"tokens": 8 * 2 * 64, "seq_len": 64, "batch_size": 2, "lr": 3e-3, "grad_accum": 2},
    }
    for stage, values in stage_overrides.items():
        overrides[stage].update(values)
    return load_config(overrides=overrides)


def metrics(run_dir, stage):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_lowers_its_loss(tmp_path, stage):
    cfg = config(tmp_path)
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    assert train_stage(stage, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run")
    rows = metrics(tmp_path / "run", stage)
    assert [r["step"] for r in rows] == list(range(1, total_steps(cfg.stage(stage)) + 1))
    assert {"stage", "step", "tokens", "loss", "lr", "tok_s", "grad_norm", "elapsed_s"} <= rows[0].keys()
    assert rows[-1]["tokens"] == cfg.stage(stage).tokens
    curve = [r["loss"] for r in rows]
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == len(rows) // 4 and val[-1] < val[0], val  # held-out loss (every 4 steps) falls too
    assert student.model.gradient_checkpointing is False  # stage 3 switched it on only while training


def test_stage3_checkpointed_gradients_equal_plain_ones(tmp_path):
    teacher = tiny_teacher("llama")
    ids = torch.randint(3, 320, (2, 40))
    grads = []
    for checkpointing in (False, True):
        student = build_student(teacher, "rwkv7").train()
        student.model.gradient_checkpointing = checkpointing
        next_token_ce(student(ids).logits, ids).backward()
        grads.append(student.model.layers[0].time_mix.r_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_autocast_trains_fp32_weights(tmp_path, stage):
    cfg = config(tmp_path, **{f"stage{stage}": {"tokens": 2 * 4 * 32}})
    cfg.dtype = "bf16"
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    assert train_stage(stage, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "run", stage))
    assert {p.dtype for p in student.parameters()} == {torch.float32}  # autocast computes in bf16 only


def test_stage1_changes_only_time_mix_parameters(tmp_path):
    cfg = config(tmp_path, stage1={"tokens": 3 * 4 * 32})
    teacher = tiny_teacher("qwen2")
    teacher_before = {n: p.detach().clone() for n, p in teacher.state_dict().items()}
    student = build_student(teacher, "rwkv7", attention_layers=[1])  # the kept softmax layer must not train
    before = {n: p.detach().clone() for n, p in student.state_dict().items()}
    train_stage(1, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run")
    trained = time_mix_parameter_names(student)
    assert trained and not any(n.startswith("model.layers.1.") for n in trained)
    after = student.state_dict()
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert changed == trained  # every time-mix tensor moved, nothing else did (bit for bit)
    assert all(torch.equal(teacher.state_dict()[n], t) for n, t in teacher_before.items())
    assert not teacher.model.layers[0].self_attn._forward_hooks  # the tap is gone after the stage


def test_teacher_tap_captures_attention_input_and_output():
    teacher = tiny_teacher("llama")
    tap = TeacherAttentionTap(teacher)
    ids = torch.randint(3, 320, (1, 8))
    with torch.no_grad():
        out = teacher.model(input_ids=ids, output_hidden_states=True)
    inputs, outputs = tap.take()
    layer = teacher.model.layers[0]
    residual = out.hidden_states[0]
    torch.testing.assert_close(inputs[0], layer.input_layernorm(residual))
    # the layer's output is its input plus attention plus MLP; rebuild it from the captured attention
    mid = residual + outputs[0]
    torch.testing.assert_close(mid + layer.mlp(layer.post_attention_layernorm(mid)), out.hidden_states[1])
    assert tap.inputs == [None, None]  # take() lets go of the tensors
    tap.remove()


def test_freeze_mlp_in_stage2(tmp_path):
    cfg = config(tmp_path, stage2={"freeze_mlp": True, "tokens": 2 * 4 * 32})
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    mlp = student.model.layers[0].mlp.up_proj.weight.detach().clone()
    embed = student.model.embed_tokens.weight.detach().clone()
    train_stage(2, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run")
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, mlp)
    assert not torch.equal(student.model.embed_tokens.weight, embed)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, stage2={"tokens": 8 * 4 * 32})
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    original, calls = student.forward, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] > 4 + 2 + 1:  # steps 1-4, the validation pass (2 batches), step 5, then NaN
            out.logits = out.logits * float("nan")
        return out

    student.forward = poisoned
    with pytest.raises(RadladsError, match=r"^stage 2: loss is nan at step 6; .*last good checkpoint: .*step-0000004"):
        train_stage(2, cfg, teacher, student, tiny_tokenizer(), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "stage2"
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 4
    assert [r["step"] for r in metrics(tmp_path / "run", 2)] == [1, 2, 3, 4, 5]


def test_seq_len_beyond_teacher_context_is_one_clear_error(tmp_path):
    cfg = config(tmp_path, stage2={"seq_len": 64})
    teacher = tiny_teacher("llama", max_position_embeddings=48)
    with pytest.raises(RadladsError, match="sequence length 64 is above the teacher's context of 48"):
        train_stage(2, cfg, teacher, build_student(teacher, "rwkv7"), tiny_tokenizer(), tmp_path / "run")


# --------------------------------------------------------------------------------------------
# losses and schedule
# --------------------------------------------------------------------------------------------


def test_attention_alignment_is_mean_over_layers_of_mse():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    c, d = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    expected = (F.mse_loss(a, b) + F.mse_loss(c, d)) / 2
    torch.testing.assert_close(attention_alignment_loss([a, None, c], [b, torch.randn(2, 3, 4), d]), expected)


def test_kl_matches_definition_scales_with_t_squared_and_top_k():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    p = F.softmax(t / 2, -1)
    by_hand = (p * (p.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(distillation_kl(s, t, temperature=2.0), by_hand)
    assert float(distillation_kl(t, t)) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(distillation_kl(s, t, top_k=11), distillation_kl(s, t))
    # top-k: the teacher renormalised over its k best tokens, the student's full-vocabulary log-probs there
    top_t, idx = t.topk(3, -1)
    p3 = F.softmax(top_t, -1)
    by_hand = (p3 * (p3.log() - F.log_softmax(s, -1).gather(-1, idx))).sum(-1).mean()
    torch.testing.assert_close(distillation_kl(s, t, top_k=3), by_hand)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("block_rows", [5, None])  # 5: three row blocks, the last one partial
def test_closed_form_kl_gradient_matches_autograd(temperature, block_rows, monkeypatch):
    if block_rows:
        monkeypatch.setattr(losses, "KL_BLOCK_ELEMENTS", 13 * block_rows)
    s = torch.randn(3, 4, 13, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 13, dtype=torch.float64)
    distillation_kl(s, t, temperature).backward()
    p = F.softmax(t / temperature, -1)
    reference = (p * (p.log() - F.log_softmax(s / temperature, -1))).sum(-1).mean() * temperature**2
    expected, = torch.autograd.grad(reference, s)
    torch.testing.assert_close(s.grad, expected)
    torch.testing.assert_close(distillation_kl(s, t, temperature).double(), reference.detach(), rtol=1e-6, atol=1e-7)


def test_next_token_ce_shifts_by_one():
    logits = torch.full((1, 3, 5), -1e4)
    logits[0, 0, 3] = logits[0, 1, 4] = 0  # predicts token 3 after position 0, 4 after position 1
    assert float(next_token_ce(logits, torch.tensor([[1, 3, 4]]))) == pytest.approx(0.0, abs=1e-5)


def test_lr_schedule_warms_up_then_decays_to_final():
    cfg = load_config(overrides={"stage1": {"lr": 1e-3, "lr_final": 1e-5, "warmup_steps": 10}})
    s = cfg.stage1
    lrs = [lr_at(i, 100, s) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-5)
    assert lr_at(50, 100, cfg.stage2) == cfg.stage2.lr  # stage 2 is flat
    assert math.isclose(lrs[9 + 45], 1e-5 + 0.5 * (1e-3 - 1e-5), rel_tol=0.05)


class FakeClock:
    """Stands in for the `time` module in radlads.train: time moves only when a batch is read."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class TickingStream:
    """A training stream whose every batch costs `seconds` of the fake clock."""

    def __init__(self, stream, clock, seconds):
        self.stream, self.clock, self.seconds = stream, clock, seconds

    def __next__(self):
        self.clock.now += self.seconds
        return next(self.stream)

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)


def test_steps_within_a_time_budget():
    from radlads.train import steps_within

    assert steps_within(1.0, spent_s=30, step_s=10, step=3, cap=100) == 6
    assert steps_within(1.0, spent_s=30, step_s=10, step=3, cap=5) == 5  # the token budget caps it
    assert steps_within(1.0, spent_s=90, step_s=10, step=3, cap=100) == 4  # late already: one more step


def test_a_time_budget_fixes_the_step_count_and_resume_keeps_it(tmp_path, monkeypatch):
    import radlads.train as train_mod
    from radlads.checkpoint import latest_checkpoint

    clock = FakeClock()
    monkeypatch.setattr(train_mod, "time", clock)
    # 1 minute at 10 s per step: 3 calibration steps (30 s) leave room for 3 more, far below the 40-step cap.
    cfg = config(tmp_path, stage2={"tokens": 40 * 4 * 32, "minutes": 1.0, "warmup_steps": 3, "schedule": "cosine"})
    teacher, run = tiny_teacher("llama"), tmp_path / "run"

    def ticking(seconds):
        def factory(s, seed):
            stream, valid = train_mod.make_data(cfg, s, seed, tiny_tokenizer())
            return TickingStream(stream, clock, seconds), valid
        return factory

    student = build_student(teacher, "rwkv7")
    assert not train_stage(2, cfg, teacher, student, tiny_tokenizer(), run, stop_after_steps=2,
                           data_factory=ticking(10))
    state = json.loads((latest_checkpoint(run / "checkpoints" / "stage2") / "state.json").read_text())
    assert (state["budgeted"], state["seconds"]) == (False, 20)  # stopped before the count was fixed
    # The resumed process calibrates on its own step and counts the first run's 20 s as spent.
    assert not train_stage(2, cfg, teacher, student, tiny_tokenizer(), run, resume=True, stop_after_steps=2,
                           data_factory=ticking(10))
    state = json.loads((latest_checkpoint(run / "checkpoints" / "stage2") / "state.json").read_text())
    assert (state["step"], state["total_steps"], state["budgeted"]) == (4, 6, True)
    # Once fixed, the count survives a resume on a machine ten times slower.
    assert train_stage(2, cfg, teacher, student, tiny_tokenizer(), run, resume=True, data_factory=ticking(100))
    rows = metrics(run, 2)
    assert [r["step"] for r in rows] == list(range(1, 7))
    s = cfg.stage(2)
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(i, 6, s) for i in range(6)])  # one schedule, 6 steps
    assert rows[-1]["lr"] == pytest.approx(s.lr_final)
