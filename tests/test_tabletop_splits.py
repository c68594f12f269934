"""The tabletop splits: train and unseen share no scene/phrasing combination, by construction."""

import numpy as np
import pytest

from vla.envs.tabletop import splits
from vla.envs.tabletop.chains import CHAIN_TASKS, feasible, plan_chain, sample_chain
from vla.envs.tabletop.episodes import KIND_OF, sample_episode
from vla.envs.tabletop.tasks import TASKS

N_SEEDS = 150


def signature(spec):
    """What the unseen split holds out, for one episode's first (sub)task."""
    sub = spec.subtasks[0]
    task = TASKS[sub.task]
    main = sub.binding[task.main]
    return {
        "combo": (sub.task, KIND_OF[main], spec.colours[main]),
        "phrasing": (sub.task, sub.template),
        "instruction": sub.instruction,
        "cell": (sub.task, spec.main_cell),
    }


def collect(split, sampler, n_seeds=N_SEEDS):
    out = {"combo": set(), "phrasing": set(), "instruction": set(), "cell": set()}
    shown = set()  # every (kind, colour) any object shows
    for seed in range(n_seeds):
        spec = sampler(split, seed)
        for name, value in signature(spec).items():
            out[name].add(value)
        shown |= {(KIND_OF[e], c) for e, c in spec.colours.items()}
    return out, shown


@pytest.mark.parametrize("task", list(TASKS))
def test_splits_are_disjoint(task):
    def sampler(split, seed):
        return sample_episode(task, split, seed)

    train, train_shown = collect("train", sampler)
    unseen, _ = collect("unseen", sampler)
    for name in train:
        assert not train[name] & unseen[name], f"{task}: {name} shared by train and unseen"
    held = {(kind, c) for kind, colours in splits.HELD_OUT_COLOURS.items() for c in colours}
    assert not train_shown & held  # no train object of any kind shows its kind's held-out colour
    assert all(cell == splits.HELD_OUT_CELL for _, cell in unseen["cell"])
    assert len(train["phrasing"]) == splits.N_TRAIN_TEMPLATES  # every train phrasing gets used


def test_chain_splits_are_disjoint():
    train, _ = collect("train", sample_chain, 100)
    unseen, _ = collect("unseen", sample_chain, 100)
    for name in train:
        assert not train[name] & unseen[name], name


def test_templates_name_every_role_and_differ():
    for name, task in TASKS.items():
        assert len(task.templates) >= splits.N_TRAIN_TEMPLATES + 2, name
        assert len(set(task.templates)) == len(task.templates), name
        for template in task.templates:
            for role in task.roles:
                assert "{" + role + "}" in template, (name, template)


def test_instructions_name_the_colours():
    spec = sample_episode("place-in-bowl", "train", 3)
    sub = spec.subtasks[0]
    assert spec.colours[sub.binding["block"]] in sub.instruction
    assert spec.colours[sub.binding["bowl"]] in sub.instruction


def test_objects_of_a_kind_have_distinct_colours():
    for seed in range(50):
        spec = sample_chain("train", seed)
        blocks = [c for e, c in spec.colours.items() if KIND_OF[e] == "block"]
        assert len(blocks) == len(set(blocks))


def test_chains_are_feasible_and_distinct():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tasks = plan_chain(rng, drawer_open=bool(rng.random() < 0.5))
        assert len(tasks) == len(set(tasks)) == 5 and set(tasks) <= set(CHAIN_TASKS)
    assert not feasible.__name__.startswith("_")


def test_episode_spec_is_a_pure_function_of_the_seed():
    a, b = sample_episode("knock-over", "unseen", 11), sample_episode("knock-over", "unseen", 11)
    assert a.colours == b.colours and a.subtasks[0].instruction == b.subtasks[0].instruction
    assert all(np.array_equal(a.xy[k], b.xy[k]) for k in a.xy)
