"""Every public function (the package's exports, the training and decoding wrappers; EKDF has
its own tests) against every class of bad argument: wrong type (list, None, bool where a
number is meant, complex, string), wrong dtype, wrong shape, a meta tensor (no data; on CPU
also a device mismatch), out-of-range numbers (negative, zero, NaN, inf). Each must raise
``TypeError`` or ``ValueError`` whose message names the argument -- before any kernel runs, so
the table runs on the reference path and the interpreter path alike in a few seconds."""

import math

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels import decoding, training

NAN, INF = math.nan, math.inf

# ---------------------------------------------------------------- classes of bad values --------
# Each class is a list of (case id, factory of the bad value given the good one).


def _tensor_types(good):
    return [("list", lambda: good.tolist()), ("None", lambda: None), ("str", lambda: "tensor"),
            ("complex", lambda: torch.zeros(good.shape, dtype=torch.complex64)),
            ("meta", lambda: torch.empty(good.shape, dtype=good.dtype, device="meta"))]


def float_tensor(good, bad_shapes=()):
    return _tensor_types(good) + [("int-dtype", lambda: torch.zeros(good.shape, dtype=torch.int64)),
                                  ("bool-dtype", lambda: torch.zeros(good.shape, dtype=torch.bool))] + [
        (f"shape{tuple(s)}", lambda s=s: torch.zeros(s, dtype=good.dtype)) for s in bad_shapes]


def index_tensor(good, bad_shapes=()):
    return _tensor_types(good) + [("float-dtype", lambda: good.float())] + [
        (f"shape{tuple(s)}", lambda s=s: torch.zeros(s, dtype=good.dtype)) for s in bad_shapes]


def mask_tensor(good, bad_shapes=()):
    return _tensor_types(good) + [(f"shape{tuple(s)}", lambda s=s: torch.ones(s)) for s in bad_shapes]


def optional_tensor(good, bad_shapes=()):
    """A tensor argument that may be None (None is fine there)."""
    return [c for c in float_tensor(good, bad_shapes) if c[0] != "None"]


def number(*, low=None, high=None, low_open=False, high_open=False, optional=False, extra=()):
    """A float argument: wrong types, NaN, inf (unless allowed) and the values just outside
    [low, high] (open ends: the end itself)."""
    cases = [("str", lambda: "0.5"), ("bool", lambda: True), ("complex", lambda: 1j), ("list", lambda: [0.5]),
             ("nan", lambda: NAN)]
    if not optional:
        cases.append(("None", lambda: None))
    if high is None or high < INF:
        cases.append(("inf", lambda: INF))
    if low is not None:
        cases += [("-inf", lambda: -INF), ("below", lambda: low if low_open else low - 0.5)]
    if high is not None and high < INF:
        cases.append(("above", lambda: high if high_open else high + 0.5))
    return cases + list(extra)


def integer(*, low=None, optional=False):
    cases = [("str", lambda: "1"), ("bool", lambda: True), ("float", lambda: 1.5), ("nan", lambda: NAN),
             ("inf", lambda: INF), ("tensor", lambda: torch.tensor([1]))]
    if not optional:
        cases.append(("None", lambda: None))
    if low is not None:
        cases.append(("below", lambda: low - 1))
    return cases


def flag():
    return [("str", lambda: "no"), ("None", lambda: None), ("int", lambda: 1)]


def shift_amount():
    """``shift``: a bool or an int >= 0 (positions), nothing else."""
    return [("str", lambda: "no"), ("None", lambda: None), ("float", lambda: 1.0), ("negative", lambda: -1)]


def choice():
    return [("unknown", lambda: "no-such-choice"), ("None", lambda: None), ("int", lambda: 1)]


def seed_tensor():
    return [("list", lambda: [1]), ("str", lambda: "1"), ("float-dtype", lambda: torch.tensor([1.0])),
            ("two-elements", lambda: torch.tensor([1, 2])), ("meta", lambda: torch.empty(1, dtype=torch.int64, device="meta"))]


# ------------------------------------------------------------------------ the table ----------
# function name -> (function, good arguments (a factory: fresh tensors), {argument: bad classes});
# calls pass every argument by keyword.

B, T, V, D, N = 2, 6, 12, 8, 5


def _policy_good():
    old = -torch.rand(B, T)
    return dict(old_log_prob=old, log_prob=old + 0.1, advantages=torch.randn(B, T), response_mask=torch.ones(B, T))


def _policy_bad(*, clip, select=False):
    bt = torch.zeros(B, T)
    bad = {
        "log_prob": float_tensor(bt, [(B * T,), (B, T + 1), (0, T)]),
        "advantages": float_tensor(bt, [(B, T + 1), (B,)]),
        "response_mask": mask_tensor(bt, [(B, T + 1)]),
    }
    if clip:
        bad["old_log_prob"] = float_tensor(bt, [(B, T + 1)])
        bad.update(clip_ratio=number(low=0.0, high=1.0), clip_ratio_low=number(low=0.0, high=1.0, optional=True),
                   clip_ratio_high=number(low=0.0, optional=True), clip_cov_ratio=number(low=0.0, high=1.0, low_open=True),
                   clip_cov_lb=[("str", lambda: "1"), ("nan", lambda: NAN), ("bool", lambda: True), ("None", lambda: None),
                                ("above-ub", lambda: 6.0)],
                   clip_cov_ub=[("str", lambda: "1"), ("nan", lambda: NAN), ("bool", lambda: True), ("None", lambda: None),
                                ("below-lb", lambda: 0.5)],
                   generator=[("str", lambda: "gen"), ("int", lambda: 3)],
                   seed=seed_tensor(), offset=seed_tensor())
    else:
        bad.update(kl_cov_ratio=number(low=0.0, high=1.0, low_open=True))
    if not select:
        bad.update(loss_agg_mode=choice(), selection=[
            ("list", lambda: [[True] * T] * B), ("float-dtype", lambda: torch.zeros(B, T)),
            ("shape", lambda: torch.zeros(B, T + 1, dtype=torch.bool)),
            ("meta", lambda: torch.empty(B, T, dtype=torch.bool, device="meta"))],
            rollout_is_weights=optional_tensor(bt, [(B, T + 1)]),
            dp_size=integer(low=1), batch_num_tokens=number(low=0.0, optional=True),
            global_batch_size=number(low=0.0, optional=True), loss_scale_factor=number(low=0.0, low_open=True, optional=True))
        if not clip:
            bad["ppo_kl_coef"] = number(low=0.0)
    return bad


def _linear_good(targets="targets"):
    return {"hidden": torch.randn(N, D), "weight": torch.randn(V, D), targets: torch.randint(0, V, (N,))}


def _linear_bad(targets="targets", weight="weight"):
    return {
        "hidden": float_tensor(torch.zeros(N, D), [(N, D + 1), ()]),
        weight: float_tensor(torch.zeros(V, D), [(V, D + 1), (V * D,), (0, D)]),
        targets: index_tensor(torch.zeros(N, dtype=torch.int64), [(N + 1,), (N, 1)]) + [
            ("out-of-range", lambda: torch.full((N,), V)), ("negative", lambda: torch.full((N,), -3))],
        "bias": optional_tensor(torch.zeros(V), [(V + 1,), (1, V)]),
        "ignore_index": integer(),
        "impl": choice(),
        "filter_eps": [("str", lambda: "never"), ("bool", lambda: True), ("nan", lambda: NAN), ("inf", lambda: INF),
                       ("negative", lambda: -1.0), ("list", lambda: [0.1])],
        "accum_fp32": flag(),
        "vocab_offset": integer(low=0, optional=True) + [("without-process-group", lambda: 0)],
        "process_group": [("str", lambda: "group"), ("int", lambda: 1)],
    }


def _cross_entropy_bad():
    """The loss options ``linear_cross_entropy`` and ``LinearCrossEntropyLoss`` share."""
    return {
        "reduction": choice(),
        "label_smoothing": number(low=0.0, high=1.0, high_open=True),
        "z_loss": number(low=0.0),
        "softcap": number(low=0.0, low_open=True, optional=True),
        "shift": shift_amount(),
    }


TABLE = {
    "entropy": (ek.entropy, lambda: dict(logits=torch.randn(B, V)), {
        "logits": float_tensor(torch.zeros(B, V), [(), (B, 0)]),
        "temperature": number(low=0.0, low_open=True) + [
            ("complex-tensor", lambda: torch.ones(B, dtype=torch.complex64)), ("int-tensor", lambda: torch.ones(B, dtype=torch.int64)),
            ("meta-tensor", lambda: torch.ones(B, device="meta")), ("shape-tensor", lambda: torch.ones(B + 1))],
        "return_lse": flag(),
    }),
    "high_entropy_mask": (ek.high_entropy_mask, lambda: dict(entropy=torch.rand(B, T), mask=torch.ones(B, T)), {
        "entropy": float_tensor(torch.zeros(B, T)),
        "mask": mask_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "top_fraction": number(low=0.0, high=1.0, low_open=True),
        "process_group": [("str", lambda: "group"), ("int", lambda: 1)],
    }),
    "linear_cross_entropy": (ek.linear_cross_entropy, _linear_good, {
        **_linear_bad(),
        **_cross_entropy_bad(),
        "return_lse": flag(),
        "chunk_size": integer(low=1, optional=True),
    }),
    "linear_logprob_entropy": (ek.linear_logprob_entropy, lambda: _linear_good("labels"), {
        **_linear_bad("labels"),
        "temperature": number(low=0.0, low_open=True),
        "return_entropy": flag(),
        "logits_budget": integer(low=0),
    }),
    "top_h_mask": (ek.top_h_mask, lambda: dict(logits=torch.randn(B, V), alpha=0.5), {
        "logits": float_tensor(torch.zeros(B, V), [(V,), (B, 0), (1, B, V)]),
        "alpha": number(low=0.0, high=1.0, low_open=True) + [
            ("complex-tensor", lambda: torch.ones(B, dtype=torch.complex64)), ("int-tensor", lambda: torch.ones(B, dtype=torch.int64)),
            ("meta-tensor", lambda: torch.ones(B, device="meta")), ("shape-tensor", lambda: torch.ones(B + 1))],
        "temperature": number(low=0.0, low_open=True),
        "mode": choice(),
        "top_n": integer(low=1),
        "return_log_mass": flag(),
    }),
    "top_h_sample": (ek.top_h_sample, lambda: dict(logits=torch.randn(B, V), alpha=0.5), {
        "logits": float_tensor(torch.zeros(B, V), [(V,)]),
        "alpha": number(low=0.0, high=1.0, low_open=True),
        "generator": [("str", lambda: "gen"), ("int", lambda: 3)],
        "seed": seed_tensor(),
        "offset": seed_tensor(),
        "return_logprobs": flag(),
    }),
    "clip_cov_select": (ek.clip_cov_select, _policy_good, _policy_bad(clip=True, select=True)),
    "kl_cov_select": (ek.kl_cov_select, lambda: {k: v for k, v in _policy_good().items() if k != "old_log_prob"},
                      _policy_bad(clip=False, select=True)),
    "clip_cov_policy_loss": (training.clip_cov_policy_loss, _policy_good, _policy_bad(clip=True)),
    "kl_cov_policy_loss": (training.kl_cov_policy_loss, _policy_good, _policy_bad(clip=False)),
    "linear_cov_policy_loss": (training.linear_cov_policy_loss, lambda: dict(
        hidden=torch.randn(B, T, D), lm_head_weight=torch.randn(V, D), labels=torch.randint(0, V, (B, T)),
        old_log_prob=-torch.rand(B, T), advantages=torch.randn(B, T), response_mask=torch.ones(B, T)), {
        "hidden": float_tensor(torch.zeros(B, T, D), [(B * T, D), (B, T, D + 1)]),
        "lm_head_weight": float_tensor(torch.zeros(V, D), [(V, D + 1)]),
        "labels": index_tensor(torch.zeros(B, T, dtype=torch.int64), [(B, T + 1)]),
        "old_log_prob": float_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "advantages": float_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "response_mask": mask_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "loss_mode": choice(),
        "loss_agg_mode": choice(),
        "temperature": number(low=0.0, low_open=True),
        "impl": choice(),
    }),
    "response_logprobs_and_entropy": (training.response_logprobs_and_entropy, lambda: dict(
        hidden=torch.randn(B, T, D), lm_head_weight=torch.randn(V, D), input_ids=torch.randint(0, V, (B, T)),
        response_length=3), {
        "hidden": float_tensor(torch.zeros(B, T, D), [(B * T, D), (B, T + 1, D), (B, T, D + 1)]),
        "lm_head_weight": float_tensor(torch.zeros(V, D), [(V, D + 1)]),
        "input_ids": index_tensor(torch.zeros(B, T, dtype=torch.int64), [(B, T + 1), (B * T,)]) + [
            ("out-of-range", lambda: torch.full((B, T), V))],
        "response_length": integer(low=1) + [("too-long", lambda: T)],
        "bias": optional_tensor(torch.zeros(V), [(V + 1,)]),
        "temperature": number(low=0.0, low_open=True),
        "return_entropy": flag(),
    }),
    "aggregate_loss": (training.aggregate_loss, lambda: dict(loss_mat=torch.randn(B, T), loss_mask=torch.ones(B, T)), {
        "loss_mat": float_tensor(torch.zeros(B, T), [(B * T,), (B, T + 1)]),
        "loss_mask": mask_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "loss_agg_mode": choice(),
        "dp_size": integer(low=1),
        "batch_num_tokens": number(low=0.0, optional=True),
        "global_batch_size": number(low=0.0, optional=True),
        "loss_scale_factor": number(low=0.0, low_open=True, optional=True),
    }),
    "entropy_bonus": (training.entropy_bonus, lambda: dict(entropy=torch.rand(B, T), mask=torch.ones(B, T), coef=0.01), {
        "entropy": float_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "mask": mask_tensor(torch.zeros(B, T), [(B, T + 1)]),
        "coef": number(),
        "loss_agg_mode": choice(),
    }),
    "LinearCrossEntropyLoss": (training.LinearCrossEntropyLoss, lambda: {}, {
        "ignore_index": integer(),
        **_cross_entropy_bad(),
        "impl": choice(),
        "filter_eps": [("str", lambda: "never"), ("bool", lambda: True), ("nan", lambda: NAN), ("negative", lambda: -1.0)],
        "accum_fp32": flag(),
        "chunk_size": integer(low=1, optional=True),
    }),
    "TopHLogitsProcessor": (decoding.TopHLogitsProcessor, lambda: dict(top_h=0.4), {
        "top_h": number(low=0.0, high=1.0, low_open=True),
        "mode": choice(),
        "top_n": integer(low=1),
        "filter_value": [("str", lambda: "-inf"), ("None", lambda: None), ("nan", lambda: NAN), ("bool", lambda: True)],
    }),
    "top_h_generate": (decoding.top_h_generate, lambda: dict(
        next_token_logits=lambda ids: torch.zeros(ids.shape[0], V), input_ids=torch.zeros(B, 2, dtype=torch.int64),
        max_new_tokens=2, alpha=0.5), {
        "next_token_logits": [("None", lambda: None), ("tensor", lambda: torch.zeros(B, V))],
        "input_ids": index_tensor(torch.zeros(B, 2, dtype=torch.int64), [(B,), (B, 2, 1)]),
        "max_new_tokens": integer(low=0),
        "alpha": number(low=0.0, high=1.0, low_open=True),
        "temperature": number(low=0.0, low_open=True),
        "mode": choice(),
        "eos_token_id": integer(optional=True),
        "generator": [("str", lambda: "gen"), ("int", lambda: 3)],
    }),
    "patch_causal_lm": (training.patch_causal_lm, None, {
        "target": [("None", lambda: None), ("str", lambda: "LlamaForCausalLM"), ("int", lambda: 3)],
        "impl": choice(),
        "filter_eps": [("str", lambda: "never"), ("nan", lambda: NAN), ("negative", lambda: -1.0)],
        "accum_fp32": flag(),
        "chunk_size": integer(low=1, optional=True),
        "return_logits": flag(),
        "force": flag(),
    }),
    "unpatch_causal_lm": (training.unpatch_causal_lm, None, {
        "target": [("None", lambda: None), ("str", lambda: "x"), ("unpatched", lambda: torch.nn.Linear(2, 2))],
    }),
    "register_with_verl": (training.register_with_verl, lambda: {}, {
        "loss_modes": [("str", lambda: "clip_cov"), ("None", lambda: None), ("unknown", lambda: ["ppo"]), ("int", lambda: 3)],
        "prefix": [("None", lambda: None), ("int", lambda: 1)],
        "replace": flag(),
    }),
}


def _patch_good():
    """A model class that patch_causal_lm accepts (a fresh subclass: patching it changes nothing shared)."""
    transformers = pytest.importorskip("transformers")
    return dict(target=type("LlamaForCausalLM", (transformers.LlamaForCausalLM,), {}))


ARGS = [pytest.param(fn_name, arg, id=f"{fn_name}-{arg}") for fn_name, (_, _, bad) in TABLE.items() for arg in bad]


def _good_args(fn_name):
    _, good, _ = TABLE[fn_name]
    if fn_name == "patch_causal_lm":
        return _patch_good()
    if fn_name == "unpatch_causal_lm":
        return {}
    return good()


@pytest.mark.parametrize("fn_name, arg", ARGS)
def test_bad_argument_raises_a_clear_error(backend, fn_name, arg):
    """Every bad class of the argument (one call each; failures are collected and reported
    together by case id)."""
    if backend.name == "cuda-triton":
        pytest.skip("argument checks run before any device work: the CPU backends cover them")
    fn, _, bad = TABLE[fn_name]
    failures = []
    for case_id, make in bad[arg]:
        kwargs = {**_good_args(fn_name), arg: make()}
        if arg == "vocab_offset" and case_id != "without-process-group":
            kwargs["process_group"] = object()  # (reaches the offset check: a group of any kind)
        if arg in ("seed", "offset"):  # given together: the other one is good
            kwargs.setdefault("offset" if arg == "seed" else "seed", torch.tensor([0]))
        try:
            with backend.context():
                fn(**kwargs)
        except (TypeError, ValueError) as exc:
            if arg not in str(exc):
                failures.append(f"{case_id}: {type(exc).__name__} does not name {arg}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a failure
            failures.append(f"{case_id}: {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{case_id}: accepted")
    assert not failures, "\n".join(failures)


# (register_with_verl's baseline registers into verl's registry: test_verl_adapter runs it)
@pytest.mark.parametrize("fn_name", [n for n in TABLE if n not in ("unpatch_causal_lm", "register_with_verl")])
def test_the_good_arguments_of_the_table_are_accepted(fn_name):
    """The table's baseline calls run (so each bad case fails because of its one bad argument)."""
    fn = TABLE[fn_name][0]
    out = fn(**_good_args(fn_name))
    if fn_name == "patch_causal_lm":
        training.unpatch_causal_lm(out)


def test_shift_needs_a_time_dimension():
    with pytest.raises(ValueError, match="shift"):
        ek.linear_cross_entropy(torch.randn(D), torch.randn(V, D), torch.tensor(1), shift=True)
