"""Compressed models: a tiny transformers causal LM built from its config, cast to bf16,
compressed, saved and loaded gives identical logits and identical greedy generations."""

import copy

import pytest
import torch

from entropy_kernels.decoding import compress_model, load_compressed, save_compressed

transformers = pytest.importorskip("transformers")


def tiny_llama(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    for p in model.parameters():  # trained-like scales, not the init's
        p.data.normal_(0, 0.05)
    return model


def _generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("group_by", ["block", "module"])
def test_compressed_model_is_bit_identical_and_survives_save_load(tmp_path, tie, group_by):
    model = tiny_llama(tie)
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        ref_logits = model(ids).logits
    ref_tokens = _generate(model, ids)

    packed = copy.deepcopy(model)
    stats = compress_model(packed, group_by=group_by, min_numel=4096, progress=False)
    big = [n for n, m in model.named_modules()
           if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and m.weight.numel() >= 4096]
    assert stats["modules"] == len(big)
    left = {n for n, _ in packed.named_parameters()}
    assert not any(f"{n}.weight" in left for n in big)
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, ref_logits)
    assert torch.equal(_generate(packed, ids), ref_tokens)

    save_compressed(packed, str(tmp_path), progress=False)
    loaded = load_compressed(str(tmp_path), device="cpu", progress=False)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref_logits)
    assert torch.equal(_generate(loaded, ids), ref_tokens)
    if tie:
        assert loaded.lm_head._ekdf_weight is loaded.model.embed_tokens._ekdf_weight


def test_model_ratio_on_trained_like_weights():
    net = torch.nn.Sequential(torch.nn.Embedding(4096, 256), torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256))
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    stats = compress_model(net.to(torch.bfloat16), progress=False)
    assert stats["modules"] == 3 and stats["ratio"] < 0.68


def test_block_grouping_uses_one_buffer_for_all_blocks():
    model = tiny_llama(False)
    compress_model(model, min_numel=4096, progress=False)
    (buf,) = model._ekdf_buffers.buffers.values()
    block = sum(-(-m.weight.numel() // 8) * 8 for m in model.model.layers[0].modules()
                if isinstance(m, torch.nn.Linear) and m.weight.numel() >= 4096)
    assert buf.numel() == max(block, 320 * 64)  # the largest block, or the embedding / LM head


def test_decode_hooks_reuse_one_view_per_weight():
    """Every forward decodes each block's weights into the same shared-buffer slices: the
    weight attributes are set once and stay the same tensors, blocks share the memory, and the
    outputs stay bit-identical forward after forward."""
    model = tiny_llama(False)
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    compress_model(model, min_numel=4096, progress=False)
    layers = model.model.layers
    seen = []
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(model(ids).logits, ref)
        seen.append([layer.mlp.up_proj.weight for layer in layers])
    assert all(a is b for a, b in zip(*seen))
    assert len({w.data_ptr() for w in seen[0]}) == 1  # one buffer slice for that weight of every block
    assert seen[0][0].shape == (128, 64)


def test_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        compress_model("model")
    model = tiny_llama(False)
    with pytest.raises(ValueError, match="not compressed"):
        save_compressed(model, "/tmp/never")
    compress_model(model, min_numel=4096, progress=False)
    with pytest.raises(ValueError, match="already compressed"):
        compress_model(model, progress=False)
    with pytest.raises(ValueError, match="group_by"):
        compress_model(tiny_llama(False), group_by="layer", progress=False)


@pytest.mark.gpu
def test_compressed_model_on_cuda_is_bit_identical(tmp_path):
    model = tiny_llama(True).cuda()
    ids = torch.randint(0, 320, (2, 9), device="cuda")
    with torch.no_grad():
        ref = model(ids).logits
    packed = copy.deepcopy(model)
    compress_model(packed, min_numel=4096, progress=False)
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, ref)
    save_compressed(packed, str(tmp_path), progress=False)
    loaded = load_compressed(str(tmp_path), device="cuda", progress=False)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    assert torch.equal(_generate(loaded, ids), _generate(model, ids))


@pytest.mark.slow
def test_checkpoint_compressed_by_the_cli_loads_as_a_model(tmp_path):
    from entropy_kernels import cli

    model = tiny_llama(True)
    ckpt, packed = tmp_path / "ckpt", tmp_path / "packed"
    model.save_pretrained(str(ckpt))
    assert cli.main(["compress", str(ckpt), str(packed), "--min-numel", "4096", "-q"]) == 0
    loaded = load_compressed(str(packed), progress=False)
    assert hasattr(loaded.model.layers[0].mlp.up_proj, "_ekdf_weight")
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(_generate(loaded, ids), _generate(model, ids))


def test_checkpoint_with_a_missing_parameter_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    from entropy_kernels import cli

    ckpt, packed = tmp_path / "ckpt", tmp_path / "packed"
    tiny_llama(False).save_pretrained(str(ckpt))
    (shard,) = [p for p in ckpt.iterdir() if p.suffix == ".safetensors"]
    tensors = load_file(str(shard))
    del tensors["model.norm.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    assert cli.main(["compress", str(ckpt), str(packed), "--min-numel", "4096", "-q"]) == 0
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        load_compressed(str(packed), progress=False)
