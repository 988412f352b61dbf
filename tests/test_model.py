"""Student model: recurrent decoding equals the parallel forward; generate() uses constant state."""

import pytest
import torch

from radlads.model import modeling_radlads
from radlads.model.modeling_radlads import RadladsCache, RWKV7TimeMix
from radlads.objectives import time_mix_forward
from helpers import tiny_teacher
from radlads.transfer import build_student

CASES = [
    ("llama", "rwkv7", []),
    ("llama", "rwkv6", []),
    ("qwen2", "rwkv7", [1]),  # hybrid: layer 1 keeps softmax attention
    ("qwen3", "rwkv7", []),
    ("mistral", "rwkv6", []),
]


@pytest.mark.parametrize("family,arch,attn", CASES)
def test_full_forward_equals_prefill_then_steps(family, arch, attn):
    torch.manual_seed(0)
    student = build_student(tiny_teacher(family), arch, attention_layers=attn, use_rope=(family == "llama"))
    ids = torch.randint(0, 320, (2, 41))
    with torch.no_grad():
        full = student(ids, use_cache=False).logits
        out = student(ids[:, :23], use_cache=True)
        cache, logits = out.cache, [out.logits]
        for t in range(23, 41):
            out = student(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
    stepped = torch.cat(logits, dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 41


def _storage_bytes(cache: RadladsCache) -> int:
    """Memory the cache keeps alive: whole storages, so a small view of a big buffer counts in full."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for layer in cache.layers if layer for t in layer.values()}
    return sum(storages.values())


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
def test_state_bytes_do_not_grow_with_context(arch):
    student = build_student(tiny_teacher("llama"), arch)
    sizes, held = [], []
    with torch.no_grad():
        for n in (8, 64, 256):
            cache = student(torch.randint(0, 320, (1, n)), use_cache=True).cache
            sizes.append(cache.nbytes())
            held.append(_storage_bytes(cache))
    assert sizes[0] == sizes[1] == sizes[2] > 0
    assert held == sizes  # no state is a view into a per-chunk buffer that grows with the context


def test_hybrid_cache_grows_only_for_attention_layers():
    student = build_student(tiny_teacher("qwen2"), "rwkv7", attention_layers=[0])
    with torch.no_grad():
        small = student(torch.randint(0, 320, (1, 10)), use_cache=True).cache
        large = student(torch.randint(0, 320, (1, 20)), use_cache=True).cache
    kv_per_token = 2 * 2 * 16 * 4  # k and v, 2 KV heads, head_dim 16, fp32
    assert large.nbytes() - small.nbytes() == 10 * kv_per_token
    assert small.layers[1]["state"].shape == (1, 4, 16, 16)


@pytest.mark.parametrize("attn", [[], [1]])
def test_left_padding_does_not_change_the_answer(attn):
    student = build_student(tiny_teacher("llama"), "rwkv7", attention_layers=attn)
    ids = torch.randint(3, 320, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = student(ids).logits[:, -1]
        masked = student(padded, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(masked, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv6"])
def test_generate_matches_manual_greedy_loop(arch):
    student = build_student(tiny_teacher("llama"), arch)
    prompt = torch.randint(3, 320, (1, 9))
    with torch.no_grad():
        generated = student.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        ids = prompt
        for _ in range(12):  # no cache: re-run the whole sequence each step
            nxt = student(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert generated.shape == (1, 21)
    assert torch.equal(generated, ids)


def test_first_time_mix_layer_has_no_value_residual_others_do():
    student = build_student(tiny_teacher("llama"), "rwkv7")
    first, second = (layer.time_mix for layer in student.model.layers)
    assert isinstance(first, RWKV7TimeMix) and first.is_first and not hasattr(first, "v0")
    assert hasattr(second, "v0")


def test_decay_is_bounded_as_in_rad_rwkv7():
    student = build_student(tiny_teacher("llama"), "rwkv7")
    tm = student.model.layers[1].time_mix
    with torch.no_grad():
        tm.w1.normal_(std=10.0)  # push the LoRA to extremes
        x = torch.randn(1, 5, 64) * 100
        w = -0.606531 * torch.sigmoid(tm.w0 + torch.tanh(x @ tm.w1) @ tm.w2)
    decay = w.exp()
    assert decay.min() >= 0.545 and decay.max() <= 1.0


def test_time_mix_forward_matches_layer_outputs_on_same_inputs():
    student = build_student(tiny_teacher("llama"), "rwkv7")
    inputs = [torch.randn(2, 10, 64) for _ in student.model.layers]
    with torch.no_grad():
        outs = time_mix_forward(student, inputs)
        pos = torch.arange(10).expand(2, 10)
        out0, v_first, _ = student.model.layers[0].time_mix(inputs[0], None, None, pos, None, False)
        out1, _, _ = student.model.layers[1].time_mix(inputs[1], v_first, None, pos, None, False)
    torch.testing.assert_close(outs[0], out0)
    torch.testing.assert_close(outs[1], out1)


def test_hybrid_decode_across_kv_buffer_growth_equals_full_forward(monkeypatch):
    monkeypatch.setattr(modeling_radlads, "KV_CACHE_MIN_ROOM", 2)  # grow every few steps
    torch.manual_seed(0)
    student = build_student(tiny_teacher("qwen2"), "rwkv7", attention_layers=[1])
    ids = torch.randint(0, 320, (2, 30))
    with torch.no_grad():
        full = student(ids, use_cache=False).logits
        out = student(ids[:, :5], use_cache=True)
        capacities, logits = [out.cache.layers[1]["k"].shape[2]], [out.logits]
        for t in range(5, 30):
            out = student(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            capacities.append(out.cache.layers[1]["k"].shape[2])
            logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-4, atol=1e-4)
    assert out.cache.layers[1]["length"] == 30
    assert len(set(capacities)) > 3  # the buffers did grow, several times


def test_hybrid_decode_step_writes_into_the_kv_buffer_in_place():
    student = build_student(tiny_teacher("qwen2"), "rwkv7", attention_layers=[1])
    with torch.no_grad():
        cache = student(torch.randint(0, 320, (1, 8)), use_cache=True).cache
        before = cache.layers[1]["k"].data_ptr(), cache.layers[1]["v"].data_ptr()
        cache = student(torch.randint(0, 320, (1, 1)), cache=cache, use_cache=True).cache
    assert (cache.layers[1]["k"].data_ptr(), cache.layers[1]["v"].data_ptr()) == before  # no copy of the past
    assert cache.layers[1]["length"] == 9


def test_reading_a_cache_without_use_cache_leaves_it_unchanged():
    student = build_student(tiny_teacher("qwen2"), "rwkv7", attention_layers=[1])
    ids = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        cache = student(ids[:, :8], use_cache=True).cache
        k_before = cache.layers[1]["k"][:, :, :8].clone()
        peek = student(ids[:, 8:], cache=cache, use_cache=False).logits
        stepped = student(ids[:, 8:], cache=cache, use_cache=True).logits
    assert cache.layers[1]["length"] == 9
    torch.testing.assert_close(cache.layers[1]["k"][:, :, :8], k_before)
    torch.testing.assert_close(peek, stepped)


def test_cache_reorder_for_beam_search():
    cache = RadladsCache(1)
    cache.layers[0] = {"state": torch.arange(3.0).view(3, 1)}
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert cache.layers[0]["state"].flatten().tolist() == [2.0, 0.0, 0.0]
    cache.layers[0] = {"k": torch.arange(3.0).view(3, 1, 1, 1), "v": torch.zeros(3, 1, 1, 1), "length": 1}
    cache.reorder_cache(torch.tensor([1, 1, 0]))  # a KV entry's int length is left alone
    assert cache.layers[0]["k"].flatten().tolist() == [1.0, 1.0, 0.0] and cache.layers[0]["length"] == 1


def test_every_config_parameter_is_documented():
    import inspect
    import re

    from radlads.model.configuration_radlads import RadladsConfig

    params = [p for p in inspect.signature(RadladsConfig.__init__).parameters if p not in ("self", "kwargs")]
    undocumented = [p for p in params if not re.search(rf"^ {{8}}{p} \(`", RadladsConfig.__doc__, re.M)]
    assert not undocumented
