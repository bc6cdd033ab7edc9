"""Environments kalm knows; importing this registers them with Gymnasium."""

import gymnasium as gym

CLEVR_ID = "kalm/CLEVRRobot-v0"

if CLEVR_ID not in gym.registry:
    gym.register(id=CLEVR_ID, entry_point="kalm.envs.clevr.env:CLEVRRobotEnv")

METAWORLD_ID = "kalm/MetaWorld-v0"

if METAWORLD_ID not in gym.registry:
    gym.register(id=METAWORLD_ID, entry_point="kalm.envs.metaworld.env:MetaWorldKALMEnv")
