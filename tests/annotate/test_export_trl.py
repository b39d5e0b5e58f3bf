"""A real client: exported pairs load with `datasets` and train TRL's RewardTrainer and DPOTrainer unchanged."""
from __future__ import annotations

import io
import os
import zipfile

import pytest

from tests.annotate.test_exports import URL, body, judge_all
from tests.conftest import api_client, join, make_campaign, make_user

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def rita(db):
    """Researcher of a campaign of 8 prompts that alice and bob judged: 16 pairs."""
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two waiting on each other
    campaign = make_campaign(prompts=8, overlap=2)
    alice = join(make_user("alice"), campaign, "labeler")
    bob = join(make_user("bob"), campaign, "labeler")
    judge_all(alice, campaign, "m1")
    judge_all(bob, campaign, "m2")
    return join(make_user("rita"), campaign, "researcher")


def train_args(config_class, tmp_path, **extra):
    return config_class(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], bf16=False, use_cpu=True, seed=0, **extra,
    )


def test_jsonl_pairs_train_trls_reward_model(rita, tiny_checkpoint, tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(body(api_client(rita).get(URL)))
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 16
    trainer = RewardTrainer(
        model=str(tiny_checkpoint), args=train_args(RewardConfig, tmp_path, max_length=128),
        train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    result = trainer.train()
    assert trainer.state.global_step == 2 and result.training_loss > 0


def test_hf_and_text_pairs_train_trls_dpo(rita, tiny_checkpoint, tmp_path):
    from datasets import load_dataset, load_from_disk
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    client = api_client(rita)
    zipfile.ZipFile(io.BytesIO(body(client.get(URL, {"format": "hf", "test_fraction": "0.25"})))).extractall(tmp_path / "hf")
    conversational = load_from_disk(str(tmp_path / "hf" / "helpful-pairs"))
    (tmp_path / "text.jsonl").write_bytes(body(client.get(URL, {"text": "true"})))
    text = load_dataset("json", data_files=str(tmp_path / "text.jsonl"), split="train", cache_dir=str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for name, train, evaluation in [("conversational", conversational["train"], conversational["test"]), ("text", text, None)]:
        trainer = DPOTrainer(
            model=str(tiny_checkpoint), args=train_args(DPOConfig, tmp_path / name, max_length=128),
            train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
        )
        trainer.train()
        assert trainer.state.global_step == 2, name
        if evaluation is not None:
            assert "eval_loss" in trainer.evaluate()
