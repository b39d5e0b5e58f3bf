"""Checkpoints someone brings: checked without loading weights, laid out with one pad choice, trained on by PPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.byo_models import GPT2_TEMPLATE, build_model
from training.model_check import ModelCheckError, check_adapter, check_checkpoint, resolve_source, write_registered_dir
from training.models import load_tokenizer
from training.ppo import PPOConfig, _critic_source, reward_fn_from_checkpoint, train_ppo

PROMPTS = [[{"role": "user", "content": q}] for q in ("Say something.", "Any words?", "Talk to me.", "What now?")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("byo")
    return {arch: build_model(root / arch, arch) for arch in ("llama", "qwen2", "gpt2")} | {
        "qwen2-reward": build_model(root / "qwen2-reward", "qwen2", reward=True, seed=1)
    }


@pytest.fixture(scope="module")
def registered(sources, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registered")
    return {
        "llama": write_registered_dir(check_checkpoint(sources["llama"], "policy"), root / "llama"),
        "gpt2": write_registered_dir(check_checkpoint(sources["gpt2"], "policy", GPT2_TEMPLATE), root / "gpt2"),
        "qwen2-reward": write_registered_dir(check_checkpoint(sources["qwen2-reward"], "reward"), root / "qwen2-reward"),
    }


@pytest.mark.parametrize("arch, architecture, pad, how", [
    ("llama", "LlamaForCausalLM", "<reserved_0>", "existing"),  # no pad token: an unused special token is taken
    ("qwen2", "Qwen2ForCausalLM", "<|endoftext|>", "own"),
    ("gpt2", "GPT2LMHeadModel", "<|pad|>", "added"),  # only <|endoftext|>: a token is added in a spare embedding row
])
def test_three_architectures_are_checked_and_their_metadata_recorded(sources, arch, architecture, pad, how):
    checked = check_checkpoint(sources[arch], "policy", GPT2_TEMPLATE if arch == "gpt2" else None)
    meta = checked.metadata
    model = AutoModelForCausalLM.from_pretrained(sources[arch])
    assert meta["architecture"] == architecture and meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert (meta["dtype"], meta["context_length"], meta["vocab_size"]) == ("F32", 256, model.config.vocab_size)
    assert meta["pad"]["token"] == pad and meta["pad"]["source"] == how and meta["pad"]["id"] != meta["eos"]["id"]
    assert len(meta["tokenizer_hash"]) == 64 and meta["source"] == str(sources[arch])


def test_the_registered_directory_carries_the_pad_choice_and_template_to_every_loader(registered, sources):
    for arch in ("llama", "gpt2"):
        plain, ours = AutoTokenizer.from_pretrained(registered[arch]), load_tokenizer(registered[arch])
        assert plain.pad_token == ours.pad_token != plain.eos_token and plain.chat_template
        assert (registered[arch] / "model.safetensors").resolve() == (sources[arch] / "model.safetensors").resolve()  # linked
        AutoModelForCausalLM.from_pretrained(registered[arch])


def test_a_sharded_checkpoint_is_checked_and_linked_shard_by_shard(sources, tmp_path):
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(sources["qwen2"]).save_pretrained(sharded, max_shard_size="60KB")
    AutoTokenizer.from_pretrained(sources["qwen2"]).save_pretrained(sharded)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    checked = check_checkpoint(sharded, "policy")
    assert checked.metadata["size_bytes"] == sum((sharded / name).stat().st_size for name in shards)
    out = write_registered_dir(checked, tmp_path / "registered")
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == checked.metadata["parameters"]
    (sharded / shards[-1]).unlink()
    with pytest.raises(ModelCheckError, match="weights missing"):
        check_checkpoint(sharded, "policy")


def test_load_tokenizer_applies_the_same_pad_choice_to_an_unregistered_copy(sources):
    assert load_tokenizer(sources["llama"]).pad_token == "<reserved_0>"


def test_a_token_generation_stops_at_is_never_the_pad(sources, tmp_path):
    stops_twice = _copy(sources["llama"], tmp_path / "two-eos")
    generation = json.loads((stops_twice / "generation_config.json").read_text())
    (stops_twice / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": [2, 3]}))  # </s> and <reserved_0>
    assert check_checkpoint(stops_twice, "policy").metadata["pad"] == {"token": "<unk>", "id": 0, "source": "existing"}
    assert load_tokenizer(stops_twice).pad_token == "<unk>"  # the same choice outside registration


def test_a_causal_lm_as_reward_model_gets_a_created_scalar_head(sources):
    checked = check_checkpoint(sources["llama"], "reward")
    assert checked.metadata["reward_head"] == "created" and checked.config.num_labels == 1
    assert check_checkpoint(sources["qwen2-reward"], "reward").metadata["reward_head"] == "trained"


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_refusals_name_the_problem(sources, tmp_path):
    with pytest.raises(ModelCheckError, match="no chat template"):
        check_checkpoint(sources["gpt2"], "policy")
    with pytest.raises(ModelCheckError, match="one label"):
        bad = _copy(sources["qwen2-reward"], tmp_path / "two-labels")
        config = json.loads((bad / "config.json").read_text())
        config["id2label"] = {"0": "a", "1": "b"}
        (bad / "config.json").write_text(json.dumps(config))
        check_checkpoint(bad, "reward")
    wider = _copy(sources["llama"], tmp_path / "wider")
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ModelCheckError, match="shapes do not match"):
        check_checkpoint(wider, "policy")
    no_weights = _copy(sources["llama"], tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelCheckError, match="weights missing"):
        check_checkpoint(no_weights, "policy")
    missing_tensor = _copy(sources["llama"], tmp_path / "missing-tensor")
    save_file({"model.embed_tokens.weight": torch.zeros(308, 32)}, missing_tensor / "model.safetensors")
    with pytest.raises(ModelCheckError, match="weights missing for"):
        check_checkpoint(missing_tensor, "policy")
    unknown = _copy(sources["llama"], tmp_path / "unknown")
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    with pytest.raises(ModelCheckError, match="config"):
        check_checkpoint(unknown, "policy")
    no_tokenizer = _copy(sources["llama"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(ModelCheckError, match="tokenizer"):
        check_checkpoint(no_tokenizer, "policy")
    with pytest.raises(ModelCheckError, match="outside the allowed model roots"):
        resolve_source(str(sources["llama"]), [tmp_path / "elsewhere"])
    leaking = _copy(sources["llama"], tmp_path / "leaking")
    (leaking / "tokenizer.json").unlink()
    (leaking / "tokenizer.json").symlink_to(sources["llama"] / "tokenizer.json")
    with pytest.raises(ModelCheckError, match="links outside"):
        resolve_source(str(leaking), [tmp_path])


def test_an_adapter_is_checked_against_its_base(registered, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(registered["llama"])
    get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    checked = check_adapter(tmp_path / "adapter", "policy", registered["llama"])
    assert checked.metadata["adapter"]["r"] == 4 and checked.adapter_config["base_model_name_or_path"] == str(registered["llama"])
    with pytest.raises(ModelCheckError, match="does not fit"):
        check_adapter(tmp_path / "adapter", "policy", _wider_base(registered, tmp_path))


def _wider_base(registered, tmp_path) -> Path:
    """A base of the same architecture at another width: the adapter's shapes do not fit it."""
    wide = build_model(tmp_path / "wide-src", "llama")
    config = json.loads((wide / "config.json").read_text())
    from transformers import LlamaConfig

    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**config, "hidden_size": 64, "intermediate_size": 96}))
    model.save_pretrained(tmp_path / "wide")
    AutoTokenizer.from_pretrained(registered["llama"]).save_pretrained(tmp_path / "wide")
    return tmp_path / "wide"


# ---------------------------------------------------------------- PPO on them


def share_of_low_ids(prompts, completions, completion_ids) -> torch.Tensor:
    """The rule: the share of the reply's tokens among the policy's first 60 ids (bytes and specials)."""
    return torch.tensor([sum(i < 60 for i in ids) / max(len(ids), 1) for ids in completion_ids])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ppo_learns_on_a_registered_model_of_another_architecture(registered, arch, tmp_path):
    config = PPOConfig(policy_path=str(registered[arch]), output_dir=str(tmp_path / "run"), lora_r=8, lora_alpha=16, learning_rate=3e-2,
                       total_iterations=25, rollout_batch_size=16, minibatch_size=8, max_new_tokens=8, save_every=100, missing_eos_penalty=None,
                       alarm_patience=10_000)  # a large step on a tiny model trips the stability alarms (tested in test_ppo_robustness)
    scores = [m["objective/scores"] for m in train_ppo(config, PROMPTS, share_of_low_ids).history]
    assert sum(scores[-5:]) / 5 > sum(scores[:5]) / 5 + 0.1, scores


def test_a_reward_model_with_another_tokenizer_scores_the_text_in_its_own_format(registered, tmp_path):
    reward_fn = reward_fn_from_checkpoint(registered["qwen2-reward"], device="cpu")
    policy_tokenizer, reward_tokenizer = load_tokenizer(registered["llama"]), load_tokenizer(registered["qwen2-reward"])
    completion = "Hello there."
    policy_ids = policy_tokenizer(completion, add_special_tokens=False)["input_ids"]
    [score] = reward_fn(PROMPTS[:1], [policy_tokenizer.decode(policy_ids)], [policy_ids])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(registered["qwen2-reward"]).eval()
    ids = reward_tokenizer.apply_chat_template(PROMPTS[0] + [{"role": "assistant", "content": completion}], return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert score.item() == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
    # the critic reads the policy's tokens: it starts from the policy, not from a reward model of another vocabulary
    config = PPOConfig(policy_path=str(registered["llama"]), output_dir=str(tmp_path), reward_model_path=str(registered["qwen2-reward"]))
    assert _critic_source(config, policy_tokenizer) is None
    same = PPOConfig(policy_path=str(registered["llama"]), output_dir=str(tmp_path), reward_model_path=str(registered["llama"]))
    assert _critic_source(same, policy_tokenizer) == str(registered["llama"])


def test_rloo_scores_another_tokenizers_completions_as_text_in_the_reward_models_format(registered):
    from training.reward_scoring import encode, forward_scores, load_reward_model
    from training.rloo import reward_fn_from_reward_model

    policy_tokenizer = load_tokenizer(registered["llama"])
    completions = [policy_tokenizer.decode(policy_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in ("Hi.", "Fine, thanks")]
    scores = reward_fn_from_reward_model(registered["qwen2-reward"], device="cpu")(PROMPTS[:1] * 2, completions)
    model, reward_tokenizer = load_reward_model(registered["qwen2-reward"], device="cpu")
    assert scores == pytest.approx(forward_scores(model, [encode(reward_tokenizer, PROMPTS[0], c) for c in completions]), abs=1e-5)


def test_ppo_runs_a_policy_against_a_reward_model_with_another_tokenizer(registered, tmp_path):
    config = PPOConfig(policy_path=str(registered["llama"]), output_dir=str(tmp_path / "run"), reward_model_path=str(registered["qwen2-reward"]),
                       lora_r=4, lora_alpha=8, total_iterations=2, rollout_batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=6)
    result = train_ppo(config, PROMPTS, reward_fn_from_checkpoint(config.reward_model_path, device="cpu"))
    assert result.iterations == 2 and result.policy_dir is not None
    assert all(torch.isfinite(torch.tensor(m["objective/scores"])) for m in result.history)
