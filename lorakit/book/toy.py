"""The minimal LoRA example of Chapter 1: a noiseless linear regression ``y = X θ``.

A "pretrained" linear layer learns θ; the task then shifts to θ + 1 (every weight
moves by one), a rank-1 change that a rank-1 LoRA can learn exactly.
Here ``θ`` has shape ``(d_in, d_out)`` as in the source blog, so an ``nn.Linear``
that fits it has ``weight = θᵀ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LinearTask",
    "make_linear_task",
    "shifted_task",
    "low_rank_shift",
    "full_data_mse",
    "fit_full_batch",
    "train_blog_protocol",
    "draw_lora_block",
]


@dataclass(frozen=True)
class LinearTask:
    """Inputs ``X`` (``n × d_in``), targets ``y = X θ`` (``n × d_out``) and ``θ`` (``d_in × d_out``) (Chapter 1).

    Example:
        >>> X, theta = torch.ones(4, 2), torch.tensor([[1.0], [2.0]])
        >>> task = LinearTask(X=X, y=X @ theta, theta=theta)
        >>> task.y.shape, task.y[:, 0].tolist()
        (torch.Size([4, 1]), [3.0, 3.0, 3.0, 3.0])
    """

    X: torch.Tensor
    y: torch.Tensor
    theta: torch.Tensor


def make_linear_task(
    n: int,
    d_in: int,
    d_out: int,
    *,
    generator: torch.Generator,
    theta: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> LinearTask:
    """Draw ``X ~ N(0, 1)`` (and ``θ ~ N(0, 1)`` unless given) and set ``y = X θ`` (Chapter 1).

    A given ``θ`` sets the dtype; otherwise ``dtype`` does.

    Example:
        >>> task = make_linear_task(10, 3, 2, generator=torch.Generator().manual_seed(0))
        >>> task.X.shape, task.y.shape, task.theta.shape
        (torch.Size([10, 3]), torch.Size([10, 2]), torch.Size([3, 2]))
    """
    if min(n, d_in, d_out) < 1:
        raise ValueError(f"n, d_in, d_out must be >= 1, got {n}, {d_in}, {d_out}")
    if theta is None:
        theta = torch.randn(d_in, d_out, generator=generator, dtype=dtype)
    elif tuple(theta.shape) != (d_in, d_out):
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected (d_in, d_out) = {(d_in, d_out)}")
    X = torch.randn(n, d_in, generator=generator, dtype=theta.dtype)
    return LinearTask(X=X, y=X @ theta, theta=theta)


def shifted_task(task: LinearTask, shift: float | torch.Tensor = 1.0, *, generator: torch.Generator) -> LinearTask:
    """A new task with ``θ₂ = θ + shift`` and fresh inputs of the same size (Chapter 1).

    ``shift`` is a number (every weight moves by it: a rank-1 change) or a
    ``(d_in, d_out)`` tensor such as :func:`low_rank_shift`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> task = make_linear_task(10, 3, 2, generator=g)
        >>> task2 = shifted_task(task, 1.0, generator=g)
        >>> torch.equal(task2.theta, task.theta + 1), task2.X.shape, torch.equal(task2.X, task.X)
        (True, torch.Size([10, 3]), False)
    """
    n, d_in = task.X.shape
    return make_linear_task(n, d_in, task.theta.shape[1], generator=generator, theta=task.theta + shift)


def low_rank_shift(d_in: int, d_out: int, rank: int, *, generator: torch.Generator) -> torch.Tensor:
    """A ``(d_in, d_out)`` matrix of exactly rank ``rank`` with singular values ``rank, rank-1, …, 1`` (Chapter 1).

    Example:
        >>> delta = low_rank_shift(5, 4, 2, generator=torch.Generator().manual_seed(0))
        >>> delta.shape, int(torch.linalg.matrix_rank(delta))
        (torch.Size([5, 4]), 2)
        >>> [round(s, 4) for s in torch.linalg.svdvals(delta)[:2].tolist()]
        [2.0, 1.0]
    """
    if not 1 <= rank <= min(d_in, d_out):
        raise ValueError(f"rank={rank} must be in 1..min(d_in, d_out) = {min(d_in, d_out)}")
    U, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=generator))
    singular_values = torch.arange(rank, 0, -1, dtype=U.dtype)
    return (U * singular_values) @ V.T


def fit_full_batch(model: torch.nn.Module, task: LinearTask, *, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the MSE of the parameters that require grad (Chapter 1).

    Returns ``steps + 1`` losses: before each step and after the last one.

    Example:
        >>> task = make_linear_task(64, 3, 2, generator=torch.Generator().manual_seed(0))
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> losses = fit_full_batch(model, task, steps=50, lr=0.1)
        >>> len(losses), losses[-1] < losses[0]
        (51, True)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(task.X), task.y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    losses.append(full_data_mse(model, task))
    return losses


# The numbers the source blog printed (Falbel, "Understanding LoRA with a minimal example",
# Posit AI blog, 2023-06-22): full-data MSE every 10 epochs of its R torch runs.
BLOG_EPOCHS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
BLOG_PRETRAIN_MSE = (577.075, 312.2, 155.055, 68.49202, 25.68243, 7.620944, 1.607114, 0.2077137, 0.01392935, 0.0004785107)
BLOG_BEFORE_ADAPTATION_MSE = 992.673
BLOG_LORA_MSE = (798.6073, 485.8804, 257.3518, 118.4895, 46.34769, 14.46207, 3.185689, 0.4264134, 0.02732975, 0.001300132)
BLOG_MERGED_MSE = 0.00130013


def full_data_mse(model: torch.nn.Module, task: LinearTask) -> float:
    """Mean squared error of ``model`` over the whole task (no gradients) (Chapter 1).

    Example:
        >>> task = make_linear_task(10, 3, 2, generator=torch.Generator().manual_seed(0))
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> model.weight = torch.nn.Parameter(task.theta.T.clone())  # the exact solution: weight = θᵀ
        >>> full_data_mse(model, task) < 1e-10
        True
    """
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(task.X), task.y).item()


def train_blog_protocol(
    model: torch.nn.Module, task: LinearTask, *, generator: torch.Generator, desc: str, epochs: int = 100
) -> list[float]:
    """The blog's ``train()``: Adam (lr 1e-3), epochs of 78 random batches of 128, MSE (Chapter 1).

    The blog runs 100 epochs (the default).

    Trains the parameters of ``model`` that require grad; returns the full-data MSE
    after every 10th epoch.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> task = make_linear_task(256, 3, 2, generator=g)
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> mse = train_blog_protocol(model, task, generator=g, desc="toy")  # a progress bar on stderr
        >>> len(mse), mse[-1] < mse[0]
        (10, True)
    """
    from ..train import fit

    params = [p for p in model.parameters() if p.requires_grad]
    history = fit(
        model, task.X, task.y, loss_fn=torch.nn.functional.mse_loss, optimizer=torch.optim.Adam(params, lr=1e-3),
        epochs=epochs, batch_size=128, sampling="random_subsets", generator=generator,
        evaluate=lambda m: {"mse": full_data_mse(m, task)}, eval_every=10, desc=desc,
    )
    return history.metric("mse")


def draw_lora_block(d_in: str = "d_in", d_out: str = "d_out", r: str = "r"):
    """Draw the LoRA block: frozen ``W`` beside the trainable ``A → B`` branch (Chapter 1).

    Returns the matplotlib figure (white background, so it reads in light and dark mode).

    Example:
        >>> fig = draw_lora_block()
        >>> fig.get_facecolor()[:3], fig.axes[0].get_title()
        ((1.0, 1.0, 1.0), 'The LoRA block: h = W x + (α/r) B A x')
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(7, 3.6), facecolor="white")
    ax.set(xlim=(0, 10), ylim=(0, 6), title="The LoRA block: h = W x + (α/r) B A x")
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="black"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)

    def arrow(start, end, label=""):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="black"))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.2, label, fontsize=9,
                    ha="center")

    box(0.2, 2.6, 1.4, 0.8, f"x\n{d_in}", "#f2f2f2")
    box(3.0, 4.0, 2.6, 1.3, f"W  frozen\n{d_out} × {d_in}", "#cfe2f3")
    box(2.6, 0.5, 1.5, 1.3, f"A  trains\n{r} × {d_in}\n(random)", "#fce5cd")
    box(4.9, 0.5, 1.5, 1.3, f"B  trains\n{d_out} × {r}\n(zeros)", "#fce5cd")
    box(7.0, 0.7, 1.1, 0.9, "× α/r", "#fff2cc")
    ax.add_patch(plt.Circle((8.6, 3.0), 0.35, fc="white", ec="black"))
    ax.text(8.6, 3.0, "+", ha="center", va="center", fontsize=16)
    box(9.2, 2.6, 0.75, 0.8, f"h\n{d_out}", "#f2f2f2")
    arrow((1.6, 3.2), (3.0, 4.5), d_in)
    arrow((1.6, 2.8), (2.6, 1.3), d_in)
    arrow((4.1, 1.15), (4.9, 1.15), r)
    arrow((6.4, 1.15), (7.0, 1.15))
    arrow((5.6, 4.6), (8.35, 3.25), d_out)
    arrow((7.55, 1.6), (8.4, 2.7))
    arrow((8.95, 3.0), (9.2, 3.0))
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    """``python -m lorakit.book.toy``: the blog's experiment at full scale (about 3 minutes on 2 cores)."""
    import argparse

    from ..inject import inject_lora, merge_lora
    from ..repro import seed_everything

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    generator = seed_everything(args.seed, threads=args.threads)
    task = make_linear_task(10_000, 1001, 1000, generator=generator)
    model = torch.nn.Sequential(torch.nn.Linear(1001, 1000, bias=False))
    pretrain = train_blog_protocol(model, task, generator=generator, desc="pre-training")
    task2 = shifted_task(task, generator=generator)
    before = full_data_mse(model, task2)
    inject_lora(model, "0", r=1, alpha=1, match="exact", init_A="gaussian")
    lora = train_blog_protocol(model, task2, generator=generator, desc="LoRA r=1")
    merge_lora(model)
    merged = full_data_mse(model, task2)
    print(f"{'epoch':>6} {'pretrain (ours)':>16} {'(blog)':>12} {'LoRA (ours)':>14} {'(blog)':>12}")
    for epoch, ours_p, blog_p, ours_l, blog_l in zip(BLOG_EPOCHS, pretrain, BLOG_PRETRAIN_MSE, lora, BLOG_LORA_MSE):
        print(f"{epoch:>6} {ours_p:>16.4g} {blog_p:>12.4g} {ours_l:>14.4g} {blog_l:>12.4g}")
    print(f"before adaptation: ours {before:.4g}, blog {BLOG_BEFORE_ADAPTATION_MSE:.4g}")
    print(f"after merging:     ours {merged:.4g}, blog {BLOG_MERGED_MSE:.4g}")


if __name__ == "__main__":
    main()
