"""The runner's reuse of step-0 evaluations (harness/evaluation_memo.py)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from harness import evaluation_memo
from harness.evaluation_memo import evaluate_initial, parameters_digest
from harness.runner import run
from tasks.base import Params
from tasks.quadratic import Quadratic


class CountingQuadratic(Quadratic):
    """A quadratic that records the split of every evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        self.calls.append(split)
        return super().evaluate(params, split)


@pytest.fixture(autouse=True)
def empty_memo():
    evaluation_memo.forget()
    yield
    evaluation_memo.forget()


def step0(frame):
    return frame[frame.step == 0].set_index(["split", "metric"]).value


def test_runs_on_one_seed_share_the_step0_evaluation_and_its_values() -> None:
    task = CountingQuadratic()
    first = run(task, "sgd", {"lr": 0.1}, steps=4, eval_every=4, seed=3, eval_splits=("train",))
    second = run(task, "adam", {"lr": 0.1}, steps=4, eval_every=4, seed=3, eval_splits=("train",))
    # step 0 once, then each run's step 4
    assert task.calls == ["train", "train", "train"]
    assert step0(first.frame()).equals(step0(second.frame()))
    fresh = run(
        Quadratic(), "sgd", {"lr": 0.1}, steps=4, eval_every=4, seed=3, eval_splits=("train",)
    )
    assert step0(fresh.frame()).equals(step0(first.frame()))


def test_another_seed_split_or_instance_is_evaluated_again() -> None:
    task = CountingQuadratic()
    params = task.init_params(0)
    evaluate_initial(task, params, "train")
    evaluate_initial(task, task.init_params(1), "train")
    evaluate_initial(task, params, "valid")
    other = CountingQuadratic()
    evaluate_initial(other, params, "train")
    assert task.calls == ["train", "train", "valid"] and other.calls == ["train"]
    evaluate_initial(task, params, "train")
    assert len(task.calls) == 3


def test_the_digest_sees_every_byte_dtype_and_shape() -> None:
    params = (torch.arange(6.0), torch.ones(2, 3))
    assert parameters_digest(params) == parameters_digest(tuple(p.clone() for p in params))
    changed = (params[0].clone(), params[1].clone())
    changed[1][1, 2] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert parameters_digest(changed) != parameters_digest(params)
    assert parameters_digest((params[0].double(), params[1])) != parameters_digest(params)
    assert parameters_digest((params[0], params[1].reshape(3, 2))) != parameters_digest(params)
    assert parameters_digest((torch.tensor(2.0),)) != parameters_digest((torch.tensor(3.0),))


def test_a_returned_value_is_a_copy_and_the_oldest_entry_goes_first(monkeypatch) -> None:
    monkeypatch.setattr(evaluation_memo, "CAPACITY", 2)
    task = CountingQuadratic()
    first = evaluate_initial(task, task.init_params(0), "train")
    first["loss"] = -1.0
    assert evaluate_initial(task, task.init_params(0), "train")["loss"] != -1.0
    evaluate_initial(task, task.init_params(1), "train")
    evaluate_initial(task, task.init_params(2), "train")  # drops seed 0's
    assert len(task.calls) == 3
    evaluate_initial(task, task.init_params(0), "train")
    assert len(task.calls) == 4


def test_the_memo_keeps_no_task_alive() -> None:
    task = CountingQuadratic()
    evaluate_initial(task, task.init_params(0), "train")
    reference = weakref.ref(task)
    del task
    gc.collect()
    assert reference() is None
