"""TRL's fused LM head and GRPO's 80/20 mask backed by entropy_kernels (training.trl_patch),
checked with TRL itself: a tiny causal LM built from a config, a few GRPOTrainer steps with
TRL's local generation, and float64 oracles for the per-token values."""

import math

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is a test dependency (pip install -e '.[test]')")

from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback  # noqa: E402
from trl.trainer import utils as trl_utils  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from entropy_kernels.training import trl_patch  # noqa: E402

V = 64


def tiny_llama(seed=0):
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


@pytest.fixture
def counted(monkeypatch):
    """Counts the calls that reach our op, so a patch that silently does nothing fails."""
    calls = []
    real = trl_patch.linear_logprob_entropy

    def spy(*args, **kwargs):
        calls.append(kwargs.get("temperature"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trl_patch, "linear_logprob_entropy", spy)
    yield calls
    trl_patch.unpatch_trl()


def fused_outputs(model, input_ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    (out.loss + 0.1 * out.entropy.sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), out.loss.detach(), grads


def test_fused_head_equals_trl_and_float64(counted):
    """log-probs, entropies, loss and every parameter gradient: patched == TRL's kernel, and the
    per-token values == float64 log-softmax of the model's own logits at TRL's temperature."""
    model = tiny_llama()
    trl_utils.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids = torch.randint(2, V, (3, 11))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 8:] = -100
    lp0, ent0, loss0, g0 = fused_outputs(model, ids, labels)
    with trl_patch.patch_trl():
        lp1, ent1, loss1, g1 = fused_outputs(model, ids, labels)
    assert counted, "the patched forward never reached entropy_kernels"
    lp2, ent2, loss2, g2 = fused_outputs(model, ids, labels)  # undone: TRL's kernel again
    assert len(counted) == 1

    with torch.no_grad():
        z = model(input_ids=ids).logits[:, :-1].double() / 0.7
    logp = torch.log_softmax(z, -1)
    y = labels[:, 1:]
    valid = y != -100
    want_lp = torch.where(valid, logp.gather(-1, y.clamp(min=0)[..., None])[..., 0], 0.0)
    want_ent = torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0)
    torch.testing.assert_close(lp1.double(), want_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent1.double(), want_ent, rtol=0, atol=2e-5)
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent1, ent0, rtol=0, atol=2e-5)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys() and len(g1) == len(list(model.parameters()))
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(lp2, lp0, rtol=0, atol=0)  # undo restored TRL's kernel exactly


def test_logit_scale_and_fallbacks(counted):
    """A logit scale folds into the temperature; softcap and extra outputs go to TRL's kernel."""
    head = trl_patch.LogProbEntropyHead(fallback=trl_utils._ChunkedLogProbFunction)
    h = torch.randn(9, 16, dtype=torch.float64).float()
    w = torch.randn(V, 16, dtype=torch.float64).float()
    y = torch.randint(0, V, (9,))
    lp, ent, *rest = head.apply(h, w, None, y, 0.8, 32768, None, 0.5, ("log_probs", "entropy"))
    logp = torch.log_softmax((h.double() @ w.double().T) * 0.5 / 0.8, -1)
    torch.testing.assert_close(lp.double(), logp[torch.arange(9), y], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-5)
    assert rest == [None, None, None] and len(counted) == 1
    for softcap, outputs in ((30.0, ("log_probs",)), (None, ("log_probs", "is_top1"))):
        out = head.apply(h, w, None, y, 0.8, 32768, softcap, 1.0, outputs)
        assert len(counted) == 1, "a call we do not cover must reach TRL's kernel"
        assert out[0].shape == (9,)


def test_undo_restores_trl_and_double_patch_raises():
    original_head = trl_utils._ChunkedLogProbFunction
    original_mask = GRPOTrainer.get_high_entropy_mask
    patch = trl_patch.patch_trl()
    try:
        assert isinstance(trl_utils._ChunkedLogProbFunction, trl_patch.LogProbEntropyHead)
        assert GRPOTrainer.get_high_entropy_mask is trl_patch.get_high_entropy_mask
        with pytest.raises(RuntimeError, match="already patched"):
            trl_patch.patch_trl()
    finally:
        patch.undo()
    patch.undo()  # idempotent
    assert trl_utils._ChunkedLogProbFunction is original_head
    assert GRPOTrainer.get_high_entropy_mask is original_mask
    assert not hasattr(GRPOTrainer, "_ek_trl_original_mask")
    with pytest.raises(TypeError, match="fused_lm_head"):
        trl_patch.patch_trl(fused_lm_head=1)
    with pytest.raises(ValueError, match="entropy_mask_rule"):
        trl_patch.patch_trl(entropy_mask_rule="quantile")
    assert not hasattr(GRPOTrainer, "_ek_trl_mask_rule")


def test_unrecognised_trl_fails_clearly(monkeypatch):
    monkeypatch.delattr(trl_utils, "_ChunkedLogProbFunction")
    with pytest.raises(RuntimeError, match="_ChunkedLogProbFunction"):
        trl_patch.patch_trl()
    assert trl_patch._ACTIVE is None


class _OneProcess:
    class accelerator:  # noqa: N801 - mimics trainer.accelerator
        num_processes = 1


@pytest.mark.parametrize("n,rho", [(40, 0.2), (60, 0.5), (33, 0.25), (17, 0.7), (1, 0.2)])
@pytest.mark.parametrize("ties", [False, True])
def test_entropy_mask_rules_against_trl(n, rho, ties):
    """Rule "trl" (the default): TRL's own mask bit for bit, ties included. Rule "top_k":
    exactly ceil(ρ·n) tokens — TRL's count where frac(ρn) is 0 or >= ρ, one more otherwise."""
    ent = torch.rand(2, n, dtype=torch.float64).float() * 5
    if ties:
        ent[torch.rand(2, n) < 0.4] = 2.5
    mask = torch.rand(2, n) < 0.8
    mask[0, 0] = True
    trl_mask = GRPOTrainer.get_high_entropy_mask(_Gathering(), ent, mask, 1 - rho)
    ours = trl_patch.get_high_entropy_mask(_OneProcess(), ent, mask, 1 - rho)
    assert torch.equal(ours, trl_mask)

    class TopK(_OneProcess):
        _ek_trl_mask_rule = "top_k"

    top_k = trl_patch.get_high_entropy_mask(TopK(), ent, mask, 1 - rho)
    n_valid = int(mask.sum())
    k = max(1, -int(-(rho * n_valid - 1e-9) // 1))
    assert int(top_k.sum()) == k and bool((top_k & ~mask).sum() == 0)
    if not ties:
        x = rho * n_valid
        frac = x - int(x)
        assert int(top_k.sum()) == int(trl_mask.sum()) + (0 if frac < 1e-9 or frac >= rho - 1e-9 else 1)


class _Gathering:
    """What TRL's own method needs of a trainer on one process."""

    class accelerator:  # noqa: N801
        num_processes = 1

        @staticmethod
        def pad_across_processes(t, dim=0, pad_index=0):
            return t

        @staticmethod
        def gather(t):
            return t


class _Recorder(TrainerCallback):
    """Gradients of every parameter just before each optimiser step."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def _grpo_run(tmp_path, patched, top_entropy_quantile, entropy_mask=True, rule="trl"):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(V - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    prompts = [" ".join(f"w{(i * 7 + j) % (V - 3)}" for j in range(4)) for i in range(8)]

    def reward(completions, **kwargs):
        return [len(c) / 10.0 + (i % 3) * 0.1 for i, c in enumerate(completions)]

    args = GRPOConfig(output_dir=str(tmp_path / ("p" if patched else "u")), max_steps=2, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=6, report_to=[], use_cpu=True, logging_steps=1,
                      learning_rate=0.1, top_entropy_quantile=top_entropy_quantile, save_strategy="no", seed=0,
                      temperature=0.8, disable_tqdm=True, optim="sgd", bf16=False)
    recorder = _Recorder()
    trainer = GRPOTrainer(model=tiny_llama(), reward_funcs=reward, args=args, train_dataset=Dataset.from_dict(
        {"prompt": prompts}), processing_class=tokenizer, callbacks=[recorder])
    logged = []
    real = trainer._get_per_token_logps_and_entropies

    def record(*a, **k):
        logps, ents, aux = real(*a, **k)
        logged.append((logps.detach().clone(), None if ents is None else ents.detach().clone()))
        return logps, ents, aux

    trainer._get_per_token_logps_and_entropies = record
    if patched:
        with trl_patch.patch_trl(entropy_mask=entropy_mask, entropy_mask_rule=rule):
            trainer.train()
    else:
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return logged, losses, recorder.grads


@pytest.mark.parametrize("top_entropy_quantile", [1.0, 0.5])
def test_grpo_steps_equal_with_and_without_patch(tmp_path, counted, monkeypatch, top_entropy_quantile):
    """Two GRPOTrainer steps (local generation, dummy reward): the per-token log-probs and
    entropies, the losses and every parameter's gradient equal TRL's own run, with the patched
    entropy mask (TRL's rule) at top_entropy_quantile 0.5: this near-uniform tiny model has exact
    entropy ties, which TRL keeps all of."""
    ref_logged, ref_losses, ref_grads = _grpo_run(tmp_path, False, top_entropy_quantile)
    assert not counted
    masks = []
    real_mask = trl_patch.quantile_mask
    monkeypatch.setattr(trl_patch, "quantile_mask", lambda *a, **k: masks.append(1) or real_mask(*a, **k))
    logged, losses, grads = _grpo_run(tmp_path, True, top_entropy_quantile)
    assert len(masks) == (2 if top_entropy_quantile < 1 else 0), "the patched entropy mask must have run"
    assert counted, "the GRPO steps never reached entropy_kernels"
    assert all(t == pytest.approx(0.8) for t in counted)
    assert len(logged) == len(ref_logged) > 0
    for (lp, ent), (lp0, ent0) in zip(logged, ref_logged):
        torch.testing.assert_close(lp, lp0, rtol=0, atol=2e-5)
        torch.testing.assert_close(ent, ent0, rtol=0, atol=2e-5)
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert len(grads) == len(ref_grads) == 2
    for step, step0 in zip(grads, ref_grads):
        assert step.keys() == step0.keys() and step
        for name in step0:
            torch.testing.assert_close(step[name], step0[name], rtol=1e-3, atol=1e-6, msg=name)


def test_grpo_entropy_mask_top_k_rule(tmp_path, monkeypatch):
    """With entropy_mask_rule="top_k" and top_entropy_quantile 0.5 the patched trainer masks with
    high_entropy_mask: exactly
    ceil(0.5·n) valid tokens, the highest entropies, ties to the earlier position (a float64
    oracle), although this near-uniform tiny model has exact entropy ties."""
    seen = []
    real = trl_patch.high_entropy_mask

    def spy(entropy, mask, top_fraction, process_group=None):
        assert process_group is None  # one process
        out = real(entropy, mask, top_fraction)
        seen.append((entropy.detach().clone(), mask.clone(), top_fraction, out))
        return out

    monkeypatch.setattr(trl_patch, "high_entropy_mask", spy)
    _grpo_run(tmp_path, True, 0.5, rule="top_k")
    assert len(seen) == 2
    for entropy, mask, top_fraction, out in seen:
        assert top_fraction == pytest.approx(0.5)
        valid = mask.flatten() != 0
        n = int(valid.sum())
        k = -(-n // 2)
        order = sorted(range(valid.numel()), key=lambda i: (-entropy.flatten()[i].double().item(), i))
        want = torch.zeros(valid.numel(), dtype=torch.bool)
        want[[i for i in order if valid[i]][:k]] = True
        assert torch.equal(out.flatten().cpu(), want)


def test_sft_through_the_fused_head_gives_trls_loss(tmp_path, counted):
    """SFT asks the fused head for is_top1 (its token-accuracy metric), which our op does not
    compute: the call must reach TRL's kernel unchanged, so the patched run's loss and
    gradients are TRL's own."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(V - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    data = Dataset.from_dict({"text": [" ".join(f"w{(i * 5 + j) % (V - 3)}" for j in range(6 + i % 3)) for i in range(8)]})

    def run(patched):
        args = SFTConfig(output_dir=str(tmp_path / str(patched)), max_steps=2, per_device_train_batch_size=4,
                         report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", seed=0, optim="sgd",
                         learning_rate=0.1, bf16=False, disable_tqdm=True)
        recorder = _Recorder()
        trainer = SFTTrainer(model=tiny_llama(), args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[recorder])
        if patched:
            with trl_patch.patch_trl():
                trainer.train()
        else:
            trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h], recorder.grads

    ref_losses, ref_grads = run(False)
    losses, grads = run(True)
    assert not counted, "SFT's is_top1 request must go to TRL's kernel"
    assert len(losses) == 2 and losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-7)
    for step, step0 in zip(grads, ref_grads):
        for name in step0:
            torch.testing.assert_close(step[name], step0[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bench_has_trls_kernel_beside_ours():
    """`entropy-kernels bench --ops linear_logprob_entropy` times TRL's chunked kernel when TRL
    is installed, and its numbers are TRL's log-probs (checked against float64 here)."""
    from entropy_kernels.benchmarking import cases_for, run_cases
    from entropy_kernels.benchmarking.linear_logprob_entropy import trl_logprob_entropy

    cases = cases_for(["linear_logprob_entropy"], "quick", torch.device("cpu"))
    assert all("trl chunked" in [p.name for p in c.providers] for c in cases)
    rows = run_cases(cases[:1], ["trl chunked"])
    assert len(rows) == 1 and rows[0].error is None and rows[0].p50_ms > 0
    h, w, y = torch.randn(5, 16), torch.randn(40, 16), torch.randint(0, 40, (5,))
    lp, ent = trl_logprob_entropy(h, w, y)
    logp = torch.log_softmax(h.double() @ w.double().T, -1)
    torch.testing.assert_close(lp.double(), logp[torch.arange(5), y], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-5)


def test_the_readme_grpo_example_runs_as_written(tmp_path, monkeypatch, counted):
    """examples/trl_grpo.py (the README's GRPO example) trains two steps through our kernels."""
    import runpy
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    example = Path(__file__).resolve().parent.parent / "examples" / "trl_grpo.py"
    ns = runpy.run_path(str(example), run_name="__main__")
    losses = [h["loss"] for h in ns["trainer"].state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert counted, "the example's steps never reached entropy_kernels"
    assert trl_patch._ACTIVE is None  # the with block undid the patch
