"""GRPO with TRL, its log-probs, entropies and 80/20 entropy mask on entropy_kernels.

Runs as is on a CPU in a few seconds: a tiny Llama built from a config, a word-level tokenizer
made in memory, a toy reward (longer completions score higher). On a GPU, swap in a real model
and tokenizer; the three lines marked "entropy_kernels" are all the integration there is.

    python examples/trl_grpo.py
"""

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from entropy_kernels.training.trl_patch import patch_trl  # entropy_kernels

words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(61)]
vocab = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
vocab.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1))
prompts = Dataset.from_dict({"prompt": [" ".join(f"w{(7 * i + j) % 61}" for j in range(4)) for i in range(16)]})


def longer_is_better(completions, **kwargs):
    return [len(c.split()) / 8.0 for c in completions]


args = GRPOConfig(output_dir="grpo-tiny", max_steps=2, per_device_train_batch_size=4, num_generations=4,
                  max_completion_length=8, top_entropy_quantile=0.2, use_cpu=not torch.cuda.is_available(),
                  bf16=torch.cuda.is_available(), report_to=[], save_strategy="no", logging_steps=1)
trainer = GRPOTrainer(model=model, reward_funcs=longer_is_better, args=args, train_dataset=prompts,
                      processing_class=tokenizer)
with patch_trl():  # entropy_kernels: fused-head log-probs/entropies and the high-entropy mask
    trainer.train()
print("losses:", [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h])
