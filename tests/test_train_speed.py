"""The recipe's speed features (learning/train/speed.py): what `auto` picks on this machine, what
an explicit choice that cannot be had says, and that the load arguments load a real model."""

from __future__ import annotations

import pytest

from learning.errors import InvalidInput
from learning.train.config import TrainConfig, build_config
from learning.train.speed import attention_implementation, liger_enabled, model_kwargs, needs_checkpointing


def cfg(**overrides) -> TrainConfig:
    return build_config("default", overrides)


def test_auto_without_a_gpu_keeps_transformers_defaults():
    c = cfg()
    assert c.liger == "auto" and c.attention == "auto"
    assert attention_implementation(c, cuda=False) is None
    assert liger_enabled(c, cuda=False) is False
    kwargs = model_kwargs(cfg(quantize="none"), cuda=False)
    assert "attn_implementation" not in kwargs and "quantization_config" not in kwargs
    assert str(kwargs["dtype"]) == "torch.float32"


def test_a_job_recorded_before_the_fields_existed_reads_as_auto():
    recorded = {k: v for k, v in cfg().model_dump().items() if k not in ("liger", "attention")}
    old = TrainConfig.model_validate(recorded)  # as the job reads its params (TrainJob.read)
    assert attention_implementation(old, cuda=False) is None
    assert liger_enabled(old, cuda=False) is False


@pytest.mark.parametrize(
    "field, value, needs",
    [("liger", "on", "liger-kernel"), ("attention", "flash_attention_2", "flash-attn")],
)
def test_asking_for_what_cannot_be_had_says_what_to_install_or_set(field, value, needs):
    c = cfg(**{field: value})
    with pytest.raises(InvalidInput) as info:
        liger_enabled(c, cuda=False) if field == "liger" else attention_implementation(c, cuda=False)
    assert needs in str(info.value) and "auto" in str(info.value)


def test_off_and_explicit_kernels_are_kept():
    assert liger_enabled(cfg(liger="off"), cuda=True) is False
    assert attention_implementation(cfg(attention="eager"), cuda=True) == "eager"
    assert attention_implementation(cfg(attention="sdpa"), cuda=False) == "sdpa"


def test_unknown_values_are_refused_with_the_field_named():
    with pytest.raises(InvalidInput) as info:
        build_config("default", {"liger": "yes", "attention": "flash"})
    text = " ".join(info.value.problems)
    assert "liger" in text and "attention" in text


def test_load_arguments_load_a_real_model_with_the_chosen_attention(tmp_path):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    kwargs = model_kwargs(cfg(attention="eager", quantize="none"), cuda=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
    assert model.config._attn_implementation == "eager"
    assert needs_checkpointing(model) is False  # a few thousand parameters


def test_the_plan_refuses_a_speed_feature_whose_package_is_missing(tmp_path):
    """Refused before any job starts, with the package to install (neither is installed here)."""
    from learning.store import Store
    from learning.train.launch import train_adapter
    from learning.train.speed import missing_packages
    from tests.support.train_helpers import make_dataset

    if not missing_packages(cfg(liger="on", attention="flash_attention_2")):
        pytest.skip("liger-kernel and flash-attn are both installed here")
    store = Store(tmp_path / "home")
    make_dataset(store)
    with pytest.raises(InvalidInput) as info:
        train_adapter(store, "coder", "ds-coder", base="embedded:tiny", overrides={"liger": "on"}, dry_run=True)
    assert "liger-kernel" in str(info.value.problems)
    store.close()
