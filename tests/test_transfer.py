"""Attention transfer copies exactly the teacher tensors; bad requests fail with one clear line."""

import pytest
import torch

from radlads.cli import main
from radlads.errors import RadladsError
from helpers import tiny_teacher
from radlads.objectives import time_mix_parameter_names
from radlads.transfer import build_student, student_name


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
def test_every_teacher_tensor_is_copied_exactly(family, arch):
    teacher = tiny_teacher(family)
    student = build_student(teacher, arch)
    student_params = dict(student.named_parameters())
    for name, tensor in teacher.state_dict().items():
        dest = student_name(name)
        if name == "lm_head.weight" and student.config.tie_word_embeddings:
            dest = "model.embed_tokens.weight"
        assert torch.equal(student_params[dest], tensor), name
    # Attention projections land in the time-mix, biases included (Qwen2 has q/k/v biases).
    tm = student.model.layers[0].time_mix
    attn = teacher.model.layers[0].self_attn
    assert torch.equal(tm.r_proj.weight, attn.q_proj.weight)
    if family == "qwen2":
        assert tm.r_proj.bias is not None and torch.equal(tm.k_proj.bias, attn.k_proj.bias)
    if family == "qwen3":
        assert torch.equal(tm.r_norm.weight, attn.q_norm.weight)


def test_gqa_shapes_kept_at_kv_width():
    student = build_student(tiny_teacher("llama"), "rwkv7")
    tm = student.model.layers[0].time_mix
    assert tm.k_proj.weight.shape == (2 * 16, 64) and tm.r_proj.weight.shape == (4 * 16, 64)


def test_tied_embeddings_stay_tied():
    student = build_student(tiny_teacher("llama", tie_word_embeddings=True), "rwkv7")
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


def test_only_new_parameters_are_time_mix_extras():
    teacher = tiny_teacher("llama")
    student = build_student(teacher, "rwkv7")
    copied = {student_name(n) for n in teacher.state_dict()}
    new = set(dict(student.named_parameters())) - copied
    assert new and all(".time_mix." in n for n in new)
    assert new <= time_mix_parameter_names(student)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(RadladsError, match="unknown --arch 'mamba'"):
        build_student(tiny_teacher("llama"), "mamba")


def test_unsupported_teacher_architecture():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(RadladsError, match="unsupported architecture 'gpt2'"):
        build_student(gpt2, "rwkv7")


def test_attention_layer_out_of_range():
    with pytest.raises(RadladsError, match="out of range"):
        build_student(tiny_teacher("llama"), "rwkv7", attention_layers=[5])


def test_init_cli_unknown_arch_exits_2(tmp_path, capsys):
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "t")
    capsys.readouterr()
    code = main(["init", "--teacher", str(tmp_path / "t"), "--arch", "mamba", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown --arch 'mamba'" in err[0]


def test_new_parameters_depend_only_on_the_seed():
    teacher = tiny_teacher("llama")
    a, b = build_student(teacher, "rwkv7", seed=3), build_student(teacher, "rwkv7", seed=3)
    c = build_student(teacher, "rwkv7", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.layers[1].time_mix.g2, c.model.layers[1].time_mix.g2)
