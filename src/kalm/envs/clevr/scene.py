"""The MJCF model of CLEVR-Robot, as the original env generates it at every reset.

Only the generated model matters (the original's seed XML is replaced at the first reset), so this
is the one model kalm builds. Ball positions are set through qpos, not by rebuilding the XML.

One compiled constant is corrected after compilation (`match_reference_contacts`): the pusher's
inverse weights. They set the regulariser of every pusher-ball contact, and the MuJoCo kalm pins
(3.3.0) computes them from the pusher's bare mass (1 / 2.6e-4 = 3820) where MuJoCo 2.3.7 includes
the joint armature (1 / (2.6e-4 + 0.04) = 24.8). With the bare mass the contact is ~100x softer:
the pusher, teleported 3 cm into the ball, stays ~2.2 cm inside it for the whole push instead of
being pushed out within ~10 physics steps, which shortens pushes, lifts the ball and changes every
collision. With the armature-inclusive weights the authors' 80 published episodes replay to their
goal 78 times out of 80 (43 without); see docs/environment.md, "Fidelity against the authors'
episodes".
"""

from __future__ import annotations

import mujoco

from kalm.envs.clevr.constants import BALL_RADIUS, COLORS, RGBA

TABLE_Z = -0.325
BALL_Z = TABLE_Z + BALL_RADIUS
PUSHER_Z = -0.2
PUSHER_RADIUS = 0.05
# qpos / qvel layout: 5 free joints (7 qpos, 6 qvel each), then the pusher's x and y slides.
BALL_QPOS = 7
BALL_QVEL = 6
PUSHER_QPOS = slice(35, 37)
PUSHER_QVEL = slice(30, 32)
NQ, NV = 37, 32


def _ball(i: int, colour: str) -> str:
    r, g, b, a = RGBA[colour]
    return f"""
    <body name="obj{i}" pos="0 0 {BALL_Z}">
      <joint name="obj{i}_slide" type="free" damping="0.75" limited="false"/>
      <geom name="{colour}" type="sphere" size="{BALL_RADIUS}" rgba="{r} {g} {b} {a}"
            material="rubber" density="1" contype="1" conaffinity="1" friction="0.8"/>
    </body>"""


def scene_xml() -> str:
    balls = "".join(_ball(i, c) for i, c in enumerate(COLORS))
    return f"""<mujoco model="clevr_robot">
  <compiler angle="radian" inertiafromgeom="true"/>
  <option timestep="0.01" gravity="0 0 -9.81" iterations="20" integrator="Euler"/>
  <default>
    <joint armature="0.04" damping="1" limited="true"/>
    <geom friction="0.8 0.1 0.1" density="300" margin="0.002" condim="3"
          contype="0" conaffinity="0"/>
  </default>
  <asset>
    <material name="rubber" specular="0" shininess="0.1" reflectance="0"/>
  </asset>
  <worldbody>
    <light directional="true" diffuse="0.5 0.5 0.5" pos="0 0 3" dir="0 0 -1"/>
    <geom name="table" type="plane" pos="0 0.5 {TABLE_Z}" size="1 1 0.1" rgba="0.6 0.6 0.6 1"
          contype="1" conaffinity="1"/>
    <geom name="left_plane" type="plane" pos="-0.6 0 0" euler="0 1.57 0" size="2 2 0.1"
          rgba="1 1 1 0" contype="1" conaffinity="0"/>
    <geom name="right_plane" type="plane" pos="0.6 0 0" euler="0 -1.57 0" size="2 2 0.1"
          rgba="1 1 1 0" contype="1" conaffinity="0"/>
    <geom name="front_plane" type="plane" pos="0 0.7 0" euler="1.57 0 0" size="2 2 0.1"
          rgba="1 1 1 0" contype="1" conaffinity="0"/>
    <geom name="behind_plane" type="plane" pos="0 -0.3 0" euler="-1.57 0 0" size="2 2 0.1"
          rgba="1 1 1 0" contype="1" conaffinity="0"/>{balls}
    <body name="point_mass" pos="0 0 {PUSHER_Z}">
      <joint name="pm_joint_x" type="slide" axis="1 0 0" range="-10.3213 10.3" damping="0.5"/>
      <joint name="pm_joint_y" type="slide" axis="0 1 0" range="-10.3213 10.3" damping="0.5"/>
      <geom name="pm" type="sphere" size="{PUSHER_RADIUS}" rgba="1 1 1 1" density="0.5"
            contype="1" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="pm_joint_x" gear="1" ctrlrange="-2 2" ctrllimited="true"/>
    <motor joint="pm_joint_y" gear="1" ctrlrange="-2 2" ctrllimited="true"/>
  </actuator>
</mujoco>"""


def match_reference_contacts(model: mujoco.MjModel) -> None:
    """Give the pusher the armature-inclusive inverse weights of the reference simulator.

    For the pusher's two slide dofs the inverse weight is 1 / (mass + armature); the body's
    translational inverse weight is the mean over x, y and z, where z cannot move (0), i.e. 2/3
    of it, and it cannot rotate (0). These are the values MuJoCo 2.3.7 compiles for this model;
    the balls' weights (free joints) are the same in both versions and are left alone.
    """
    body = model.body("point_mass").id
    dofs = [model.joint(f"pm_joint_{axis}").dofadr[0] for axis in ("x", "y")]
    weight = 1.0 / (model.body_mass[body] + model.dof_armature[dofs[0]])
    model.dof_invweight0[dofs] = weight
    model.body_invweight0[body] = (2.0 * weight / 3.0, 0.0)


def build_model(match_reference: bool = True) -> mujoco.MjModel:
    """The compiled scene; `match_reference=False` keeps MuJoCo 3.3.0's own pusher weights
    (only for measuring what the correction changes)."""
    model = mujoco.MjModel.from_xml_string(scene_xml())
    if (model.nq, model.nv, model.nu) != (NQ, NV, 2):
        raise RuntimeError(f"unexpected CLEVR model sizes nq={model.nq} nv={model.nv}")
    if match_reference:
        match_reference_contacts(model)
    return model
