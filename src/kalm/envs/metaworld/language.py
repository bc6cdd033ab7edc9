"""Instruction texts for Meta-World, written for kalm (none copied from KALM's data).

Each task has five ways of saying what to do; four sentence frames turn them into 20
instructions. The rephrase level states a complaint about the scene before the request (KALM's
style for that level: the same tasks, new wording); wall tasks mention the wall; make-coffee
mentions the button, because its success needs the press.
"""

from __future__ import annotations

import numpy as np

from kalm.envs.metaworld.tasks import LEVEL_TASKS, task_level

FRAMES = ("{Core}.", "Please {core}.", "Your task is to {core}.", "Go ahead and {core}.")
REQUESTS = ("could you {core}?", "please {core}.", "I'd like you to {core}.",
            "would you {core} for me?")

CORES: dict[str, tuple[str, ...]] = {
    "reach": ("move the gripper to the target spot", "bring the end effector to the goal "
              "position", "reach the marked point with the gripper", "guide the arm so the "
              "gripper sits at the target", "send the gripper over to the goal location"),
    "push": ("push the puck to the target spot", "slide the block over to the goal position",
             "nudge the object along the table until it reaches the target", "shove the puck "
             "onto the marked location", "move the block to the goal by pushing it"),
    "pick-place": ("pick up the block and place it at the target", "grab the object and set "
                   "it down at the goal position", "lift the puck and carry it to the marked "
                   "spot", "grasp the item, raise it and put it on the target", "take the "
                   "block off the table and drop it at the goal location"),
    "button-press": ("press the button", "push the button in", "press down on the button with "
                     "the gripper", "poke the button until it clicks in", "jab the button on "
                     "the box"),
    "door-unlock": ("unlock the door", "turn the lock on the door to unlock it", "twist the "
                    "door's lock into the open position", "release the lock on the door",
                    "rotate the door lock so the door is no longer locked"),
    "door-open": ("open the door", "pull the door open by its handle", "swing the door open",
                  "grab the door handle and pull the door wide", "get the door open"),
    "window-open": ("open the window", "slide the window open", "push the window sideways "
                    "until it is open", "drag the window's handle to open it", "move the "
                    "sliding window into the open position"),
    "faucet-open": ("turn on the faucet", "rotate the faucet handle to open it", "twist the "
                    "tap on", "swing the faucet lever to the open side", "open the tap"),
    "coffee-push": ("push the mug under the coffee machine", "slide the cup beneath the "
                    "machine's spout", "move the mug so it sits under the coffee maker",
                    "nudge the coffee cup into place below the nozzle", "shove the mug toward "
                    "the coffee machine until it is under the spout"),
    "coffee-button": ("press the button on the coffee machine", "push the coffee maker's "
                      "button", "hit the start button of the coffee machine", "press the "
                      "machine's button to start the coffee", "tap the button on the front "
                      "of the coffee maker"),
    "reach-wall": ("reach the target point while avoiding the wall", "move the gripper over "
                   "the wall to the goal spot", "bring the gripper to the target, going around "
                   "the wall in the way", "get the gripper to the goal position despite the "
                   "wall", "steer the gripper past the wall to the marked point"),
    "push-wall": ("push the puck to the target while getting around the wall", "slide the "
                  "block past the wall to the goal", "move the object around the wall and onto "
                  "the target spot", "nudge the puck to the goal position, steering clear of "
                  "the wall", "push the block to the marked location even though a wall "
                  "stands in the way"),
    "pick-place-wall": ("pick up the block and lift it over the wall onto the target", "grab "
                        "the puck, carry it past the wall and set it at the goal", "lift the "
                        "object over the wall and place it at the marked spot", "grasp the "
                        "item and bring it to the target on the other side of the wall",
                        "take the block over the blocking wall and put it down at the goal "
                        "position"),
    "button-press-wall": ("press the button behind the wall", "reach around the wall and push "
                          "the button in", "push the button even though a wall is in front of "
                          "it", "get past the wall and press the button", "press the button "
                          "that the wall partly blocks"),
    "door-lock": ("lock the door", "turn the door's lock to the locked position", "twist the "
                  "lock down so the door is locked", "secure the door with its lock", "rotate "
                  "the door lock shut"),
    "door-close": ("close the door", "push the door shut", "swing the door closed", "shut the "
                   "open door", "push the door back until it is closed"),
    "window-close": ("close the window", "slide the window shut", "push the window sideways "
                     "until it is closed", "drag the window's handle to close it", "move the "
                     "sliding window into the closed position"),
    "faucet-close": ("turn off the faucet", "rotate the faucet handle to close it", "twist "
                     "the tap off", "swing the faucet lever to the closed side", "shut the "
                     "tap"),
    "make-coffee": ("push the mug under the coffee machine and then press its button", "slide "
                    "the cup beneath the spout, then push the coffee maker's button", "place "
                    "the mug under the nozzle and press the machine's button to brew", "move "
                    "the cup into place below the coffee machine, then hit its button", "get "
                    "the mug under the spout first and press the coffee button after that"),
    "locked-door-open": ("unlock the door and then open it", "turn the lock first, then pull "
                         "the door open", "release the door's lock and swing the door open",
                         "unlock the locked door, then pull it open by the handle", "open the "
                         "door, which first needs to be unlocked"),
    "hammer": ("pick up the hammer and drive the nail in", "grab the hammer and hit the nail "
               "into the wall", "use the hammer to knock the nail in", "take the hammer and "
               "pound the nail until it goes in", "strike the nail with the hammer"),
    "soccer": ("kick the ball into the goal", "push the soccer ball into the net", "get the "
               "ball into the goal", "nudge the football into the goal area", "shoot the ball "
               "into the goal"),
}

COMPLAINTS: dict[str, tuple[str, ...]] = {
    "reach": ("The gripper is in the wrong place", "I don't like where the gripper is right "
              "now", "The arm is nowhere near where I need it", "Having the gripper sit over "
              "here annoys me", "The gripper's current position is no good to me"),
    "push": ("The puck is sitting in the wrong spot", "I'm unhappy with where that block is",
             "That object is too far from where it belongs", "It bothers me that the puck is "
             "off target", "The block's position is not what I want"),
    "pick-place": ("That block doesn't belong where it is now", "I'm not happy with the object "
                   "lying there", "The puck is in an inconvenient place", "Seeing the block "
                   "out of place annoys me", "The item should not be resting there"),
    "button-press": ("The button hasn't been pressed and that bugs me", "I'm tired of the "
                     "button sticking out", "Nothing happens until that button is pressed",
                     "The unpressed button is annoying me", "I need that button pushed"),
    "door-unlock": ("The door is locked and I can't get in", "I hate that this door stays "
                    "locked", "The lock on the door is in my way", "A locked door is no use "
                    "to me", "It's frustrating that the door is locked"),
    "door-open": ("The closed door is in my way", "I can't stand the door being shut", "The "
                  "door is closed and I need to get through", "A shut door annoys me", "It's "
                  "stuffy with the door closed"),
    "window-open": ("It's too stuffy with the window shut", "The closed window is bothering "
                    "me", "I want some fresh air, but the window is closed", "I dislike the "
                    "window being closed", "The room needs air and the window is shut"),
    "faucet-open": ("The faucet is off and I need water", "I'm thirsty and the tap is closed",
                    "No water is coming out of the faucet", "It annoys me that the tap is "
                    "turned off", "I want to wash my hands, but the faucet is off"),
    "coffee-push": ("The mug is not under the coffee machine", "My cup is too far from the "
                    "spout", "I can't make coffee with the mug over there", "It bugs me that "
                    "the cup isn't in place", "The mug is sitting in the wrong spot for "
                    "coffee"),
    "coffee-button": ("The coffee machine is still off", "I'd love a coffee, but the machine "
                      "hasn't started", "Nobody has pressed the coffee button yet", "I'm "
                      "waiting for coffee and the machine is idle", "The coffee maker is doing "
                      "nothing"),
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def instructions(task: str, level: str) -> list[str]:
    """The 20 instructions of `task` at `level` ("rephrase": complaint + request)."""
    if task not in LEVEL_TASKS.get(level, ()):
        raise ValueError(f"task {task!r} is not in level {level!r}")
    cores = CORES[task]
    if level == "rephrase":
        return [f"{complaint}; {request.format(core=cores[(i + j) % len(cores)])}"
                for i, complaint in enumerate(COMPLAINTS[task])
                for j, request in enumerate(REQUESTS)]
    return [frame.format(core=core, Core=_cap(core)) for core in cores for frame in FRAMES]


def describe(task: str, rng: np.random.Generator | None = None) -> str:
    """One instruction for `task` from its own level (the first one without a generator)."""
    texts = instructions(task, task_level(task))
    return texts[0] if rng is None else texts[int(rng.integers(len(texts)))]
