"""The step loop: a run interrupted at any step and resumed from its checkpoint ends bit-identical to the
uninterrupted run (parameters, EMA, final file); a finished workdir reloads; another run's workdir is refused."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailsynth.errors import TailsynthError
from tailsynth.training.steps import StepLoop, batch_indices

STEPS = 7


class Interrupt(Exception):
    pass


def toy_loop(workdir: Path, fingerprint: str = "toy") -> tuple[nn.Module, StepLoop]:
    """A small MLP with every option of the loop on: EMA, clipping, an lr schedule, checkpoints every 2 steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    params = dict(sorted(model.named_parameters()))
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2, weight_decay=0.01)
    loop = StepLoop(params, opt, torch.Generator().manual_seed(1), workdir, STEPS, fingerprint, {"steps": STEPS},
                    checkpoint_every=2, device=torch.device("cpu"), mismatch="another toy run", ema_decay=0.9,
                    grad_clip=0.5, lr_at=lambda k: [2e-2 * (k + 1) / STEPS], module=model, progress=False)
    return model, loop


def toy_loss(model: nn.Module, loop: StepLoop, interrupt_at: int | None = None):
    """Regression on a fixed data set; batch k of the seeded order plus input noise from the loop's generator."""
    x_all = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    y_all = x_all.sum(1, keepdim=True).sin()

    def loss_at(step: int) -> torch.Tensor:
        if step == interrupt_at:
            raise Interrupt
        idx = batch_indices(step, 6, len(x_all), seed=3)
        x = x_all[idx] + 0.1 * torch.randn(6, 4, generator=loop.generator)
        return F.mse_loss(model(x), y_all[idx])

    return loss_at


def run(workdir: Path, interrupt_at: int | None = None, max_new_steps: int | None = None):
    model, loop = toy_loop(workdir)
    return model, loop.run(toy_loss(model, loop, interrupt_at), max_new_steps)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("interrupt", ["hook raises at step 5", "max_new_steps=3"])
def test_an_interrupted_run_resumes_bit_identical(tmp_path, interrupt):
    reference, done = run(tmp_path / "ref")
    assert done.finished and done.step == STEPS and len(done.losses) == STEPS
    assert not torch.equal(reference[0].weight, toy_loop(tmp_path / "fresh")[0][0].weight)  # it did train

    if interrupt.startswith("hook"):
        with pytest.raises(Interrupt):
            run(tmp_path / "cut", interrupt_at=5)
        resumed_at = 4  # the last checkpoint (every 2 steps)
    else:
        first = run(tmp_path / "cut", max_new_steps=3)[1]
        assert not first.finished and first.step == 3 and first.losses == done.losses[:3]
        resumed_at = 3  # the checkpoint at the end of the call
    resumed, again = run(tmp_path / "cut")
    assert again.finished and again.step == STEPS and again.losses == done.losses[resumed_at:]
    assert_same_weights(reference, resumed)
    for name in ("final.safetensors", "train_state.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_a_finished_workdir_reloads_its_final_weights_without_steps(tmp_path):
    reference, _ = run(tmp_path)
    model, done = run(tmp_path, interrupt_at=0)  # the hook would raise if a step ran
    assert done.finished and done.step == STEPS and done.losses == []
    assert_same_weights(reference, model)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        run(tmp_path, interrupt_at=3)
    model, other = toy_loop(tmp_path, fingerprint="other settings")
    with pytest.raises(TailsynthError, match=f"{tmp_path} holds another toy run"):
        other.run(toy_loss(model, other))
