"""The project's own tabletop suite: what Meta-World lacks, in MuJoCo, behind `vla.envs.suite`.

A floating parallel gripper works on a table with a drawer cabinet, a push button with a lamp, a
bowl, a flat target pad, up to four blocks and a standing bottle. Two cameras (`static`, in front of
and above the table; `wrist`, on the gripper), per-episode colours, positions and distractors,
paraphrased instructions, a held-out `unseen` split and CALVIN-style instruction chains.

Tasks (success is judged on simulator state every step):

    lift-block          the block's centre is more than 10 cm up
    place-in-bowl       the block rests in the bowl (centre within 6 cm), not touched by the fingers
    place-on-pad        the block rests on the pad (centre within 5 cm per axis), not touched
    push-block-to-pad   the block is on the pad and on the table (the pusher may still touch it)
    stack-blocks        the top block rests on the base block (centres within 2.5 cm), not touched
    slide-block-left    the block moved more than 10 cm to the left and rests on the table
    slide-block-right   ... to the right
    open-drawer         the drawer is out by more than 7 of its 10 cm
    close-drawer        the drawer is out by less than 1.5 cm
    press-button        the lamp changed state (each press past 8 mm toggles it)
    knock-over          the bottle is tilted more than 60 degrees

Spaces (raw units, `vla.keys`), control at 20 Hz (25 physics steps of 2 ms):

    observation.images.static, observation.images.wrist   uint8 (S, S, 3), upright, S = image_size
    observation.state     float32 (4,): grip point x, y, z (m; table top z = 0, x right, y away from
                          the static camera) and gripper opening in [0, 1] (1 open, 0 closed)
    action                float32 (4,): grip-point displacement x, y, z (m per step, |.| <= 0.025) and
                          gripper command in [-1, 1] (-1 open, +1 close)

Splits (`make_env(..., split=...)`, see `splits`): `train` and `unseen` are disjoint by construction.
Each object kind holds out two colours that no `train` object of that kind ever shows and that the
main object of every `unseen` episode shows; each task holds out two of its six phrasings; and the
main object of an `unseen` episode stands in a held-out cell (front-right sixth) of its spawn area.

Chains (`make_env("chain", ...)` or `TabletopSuite().make_chain_env(chain_length=5, subtask_steps=150)`):
one scene receives `chain_length` instructions in turn, each a different task, planned so each is
feasible after the ones before. A subtask is done the first step its predicate holds; the next
instruction follows at once (the robot is not reset). A subtask that runs out of its step budget
ends the episode (`terminated=True`), as does completing the whole chain. Read per step:

    env.unwrapped.instruction      the instruction now in force (it changes within the episode)
    env.unwrapped.chain            the list of `Subtask`s (task, binding, instruction)
    info["subtask_index"]          index of the subtask now running (== chain length when all done)
    info["subtask"]                its task name
    info["subtask_success"]        True on the step a subtask was completed
    info["chain_length"]           subtasks completed in a row so far: the CALVIN chain length
    info["success"]                True once the whole chain is complete

The average chain length over episodes is the CALVIN score (0 to 5). The scripted expert
(`make_expert`) completes chains as it does single tasks.

Gymnasium ids `vla/tabletop-<task>` and `vla/tabletop-chain` are registered on import.
"""

from vla.envs.tabletop.suite import TabletopSuite, register

register()

__all__ = ["TabletopSuite"]
