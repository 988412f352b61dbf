"""Teacher-informed time-mix init: decays follow the teacher's attention distances, gains are a least-squares fit."""

import math

import pytest
import torch
import torch.nn.functional as F

from radlads.config import load_config
from radlads.errors import RadladsError
from radlads.model.modeling_radlads import DECAY_SCALE
from radlads.teacher_init import attention_distances, initialise_from_teacher
from helpers import tiny_teacher
from radlads.objectives import TeacherAttentionTap, time_mix_forward
from radlads.transfer import build_student


def _batches(seed=0, n=2, T=96):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (1, T), generator=g) for _ in range(n)]


def _l2(student, teacher, batches):
    tap = TeacherAttentionTap(teacher)
    with torch.no_grad():
        teacher.model(input_ids=torch.cat(batches), use_cache=False)
        inputs, targets = tap.take()
        tap.remove()
        outputs = time_mix_forward(student, inputs)
    return sum(float(F.mse_loss(o, t)) for o, t in zip(outputs, targets)) / len(targets)


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gain_fit_beats_both_the_transfer_and_a_zero_output(arch, family):
    teacher = tiny_teacher(family)
    fit = _batches()
    plain = build_student(teacher, arch)
    fitted = build_student(teacher, arch)
    initialise_from_teacher(fitted, teacher, fit, "gain")
    zero = build_student(teacher, arch)
    with torch.no_grad():
        for layer in zero.model.layers:
            layer.time_mix.o_proj.weight.zero_()
            if layer.time_mix.o_proj.bias is not None:
                layer.time_mix.o_proj.bias.zero_()
    # On the data it was fitted on, a least-squares gain can only improve on gain 1 and gain 0.
    assert _l2(fitted, teacher, fit) < min(_l2(plain, teacher, fit), _l2(zero, teacher, fit))
    # Only parameters stage 1 trains have moved.
    changed = {n for (n, a), (_, b) in zip(plain.named_parameters(), fitted.named_parameters()) if not torch.equal(a, b)}
    assert changed and all(".time_mix." in n for n in changed)


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
def test_decay_centres_match_the_teachers_attention_distance(arch):
    teacher = tiny_teacher("llama")
    student = build_student(teacher, arch)
    batches = _batches(T=128)
    initialise_from_teacher(student, teacher, batches, "decay")
    tap = TeacherAttentionTap(teacher)
    with torch.no_grad():
        teacher.model(input_ids=torch.cat(batches), use_cache=False)
    inputs, _ = tap.take()
    tap.remove()
    cfg = student.config
    H, D = cfg.num_attention_heads, cfg.head_dim
    d = attention_distances(teacher.model.layers[1].self_attn, inputs[1], H, cfg.num_key_value_heads, D,
                            cfg.rope_theta)
    assert d.shape == (H,) and bool((d > 0).all())
    w0 = student.model.layers[1].time_mix.w0.detach().view(H, D)
    centre = w0.mean(-1)  # the spread is symmetric around the centre
    if arch == "rwkv7":
        decay = torch.exp(-DECAY_SCALE * torch.sigmoid(centre))
    else:
        decay = torch.exp(-torch.exp(centre))
    expected = (d / (1 + d)).clamp(min=math.exp(-DECAY_SCALE) + 1e-3) if arch == "rwkv7" else d / (1 + d)
    assert torch.allclose(decay, expected, rtol=1e-3, atol=1e-3)


def test_attention_distance_of_a_uniform_head():
    teacher = tiny_teacher("llama", num_attention_heads=1, num_key_value_heads=1)
    attn = teacher.model.layers[0].self_attn
    T, C = 96, 64
    x = torch.randn(1, T, C)
    with torch.no_grad():
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
    d = attention_distances(attn, x, 1, 1, C, 1e9)  # rope_theta huge: no rotation to speak of
    # All-zero scores: uniform attention over keys 1..t, mean distance (t-1)/2 averaged over queries.
    start = 64
    expected = sum((t - 1) / 2 for t in range(start, T)) / (T - start)
    assert abs(float(d[0]) - expected) < 1e-3


def test_config_rejects_an_unknown_mode():
    with pytest.raises(RadladsError, match="student.teacher_init"):
        load_config(overrides={"student": {"teacher_init": "magic"}})


@pytest.mark.parametrize("arch,same_as,not_as", [("rwkv7", "decay+gain", "gain"), ("rwkv6", "gain", "decay+gain")])
def test_auto_mode_is_the_measured_best_of_each_arch(arch, same_as, not_as):
    teacher = tiny_teacher("llama")
    batches = _batches(T=128)
    students = {}
    for mode in ("auto", same_as, not_as):
        students[mode] = build_student(teacher, arch, seed=0)
        initialise_from_teacher(students[mode], teacher, batches, mode)
    auto, same, other = (students[m].state_dict() for m in ("auto", same_as, not_as))
    assert all(torch.equal(auto[k], same[k]) for k in auto)
    assert not all(torch.equal(auto[k], other[k]) for k in auto)
    assert load_config(overrides={"student": {"teacher_init": "auto"}}).student.teacher_init == "auto"
