"""Fixtures shared by the test modules; plain helpers live in helpers.py."""

import pytest
import torch

from helpers import save_tiny_student, save_tiny_teacher


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a shared 2-core machine a second thread spins more than it computes (2x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Hugging Face folders of a tiny llama teacher (seed 0) and an exported, untrained RWKV7 student.

    The student is transferred from a teacher of another seed (1), so the two models differ. Built
    once per test session; tests must not write into these folders (use their own tmp_path).
    """
    root = tmp_path_factory.mktemp("models")
    return {"teacher": save_tiny_teacher(root / "teacher", "llama", seed=0),
            "student": save_tiny_student(root / "student", "llama", seed=1)}
