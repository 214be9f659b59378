"""patch_causal_lm on tiny transformers models built from configs (no downloads): the patched
model returns the same loss and gradients as the original, without building logits."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from entropy_kernels.training import SUPPORTED_CAUSAL_LMS, patch_causal_lm, unpatch_causal_lm  # noqa: E402

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    "LlamaForCausalLM": ("LlamaConfig", {}),
    "MistralForCausalLM": ("MistralConfig", {}),
    "Qwen2ForCausalLM": ("Qwen2Config", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", {"head_dim": 8}),
    # a small softcap so that the capping changes the loss noticeably
    "Gemma2ForCausalLM": ("Gemma2Config", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "Phi3ForCausalLM": ("Phi3Config", {"pad_token_id": 0}),
    "PhiForCausalLM": ("PhiConfig", {}),
}
AVAILABLE = [name for name in SUPPORTED_CAUSAL_LMS if hasattr(transformers, name)]


def tiny_model(name):
    config_name, extra = CONFIGS[name]
    config = getattr(transformers, config_name)(**TINY, **extra)
    torch.manual_seed(0)
    return getattr(transformers, name)(config).float().train()


def batch():
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    labels = ids.clone()
    labels[0, :3] = -100
    return ids, labels


@pytest.mark.parametrize("name", AVAILABLE)
@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_patched_loss_and_grads_equal_original(name, impl):
    model = tiny_model(name)
    ids, labels = batch()
    ref = model(input_ids=ids, labels=labels)
    ref.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    patch_causal_lm(model, impl=impl, chunk_size=8)
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None  # the point: no [batch, seq, vocab] logits
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    for n, p in model.named_parameters():
        if n in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} {n}: {m}")


def test_num_items_in_batch_and_shift_labels_follow_transformers():
    model = tiny_model("LlamaForCausalLM")
    ids, labels = batch()
    n_items = torch.tensor(7)
    ref = model(input_ids=ids, labels=labels, num_items_in_batch=n_items).loss
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].clone()
    shifted[1, 4:7] = -100  # differs from labels' own shift: proves shift_labels is what is used
    ref_shift = model(input_ids=ids, labels=labels, shift_labels=shifted).loss
    patch_causal_lm(model)
    torch.testing.assert_close(model(input_ids=ids, labels=labels, num_items_in_batch=n_items).loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(input_ids=ids, labels=labels, shift_labels=shifted).loss, ref_shift, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref_shift, model(input_ids=ids, labels=labels).loss)


def test_without_labels_the_original_forward_runs():
    model = tiny_model("LlamaForCausalLM").eval()
    ids, _ = batch()
    ref = model(input_ids=ids).logits
    patch_causal_lm(model)
    torch.testing.assert_close(model(input_ids=ids).logits, ref)


def test_patch_class_and_unpatch():
    cls = transformers.LlamaForCausalLM
    original = cls.forward
    try:
        patch_causal_lm(cls)
        model = tiny_model("LlamaForCausalLM")
        ids, labels = batch()
        assert model(input_ids=ids, labels=labels).logits is None
    finally:
        unpatch_causal_lm(cls)
    assert cls.forward is original
    assert model(input_ids=ids, labels=labels).logits is not None


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="not a supported causal LM"):
        patch_causal_lm(torch.nn.Linear(2, 2))
