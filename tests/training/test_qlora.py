"""QLoRA loading (training.qlora): refused with the reason without CUDA or bitsandbytes; on a GPU, a 4-bit base under LoRA trains."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from training import qlora

NO_QLORA = not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None
WHY = "QLoRA needs a CUDA GPU and the bitsandbytes package; this machine lacks " + (
    "CUDA" if not torch.cuda.is_available() else "bitsandbytes")


def test_without_quantize_the_base_loads_as_before():
    assert qlora.load_kwargs(None) == {"dtype": torch.float32}
    assert qlora.unavailable(None) is None
    sentinel = object()
    assert qlora.prepare(sentinel, None) is sentinel


@pytest.mark.skipif(not NO_QLORA, reason="this machine can run bitsandbytes: the refusal cannot happen here")
def test_where_bitsandbytes_cannot_run_loading_in_4_or_8_bits_is_refused_with_the_reason():
    for quantize in ("4bit", "8bit"):
        reason = qlora.unavailable(quantize)
        assert reason and ("CUDA" in reason or "bitsandbytes" in reason)
        with pytest.raises(qlora.QuantizeUnavailable, match=reason.split(" ")[0]):
            qlora.load_kwargs(quantize)
    assert "must be one of" in qlora.unavailable("2bit")


@pytest.mark.skipif(NO_QLORA, reason=WHY)
def test_qlora_loads_a_4bit_base_under_trainable_adapters_on_a_gpu(tiny_checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model

    from training.policy_io import load_policy

    torch.manual_seed(0)
    model, tokenizer = load_policy(tiny_checkpoint, "4bit")
    assert model.is_loaded_in_4bit
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = tokenizer(["bananas are nice", "apples are fine"], return_tensors="pt", padding=True).to(model.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the adapters learn over the frozen 4-bit base
    model.save_pretrained(tmp_path / "adapter")
    from transformers import AutoModelForCausalLM

    merged = qlora.merged_from_adapter(tiny_checkpoint, tmp_path / "adapter", AutoModelForCausalLM)
    assert merged.dtype == torch.bfloat16 and not getattr(merged, "is_loaded_in_4bit", False)
