"""The LLM half of KALM: backbones, the rollout model, grounding, generation.

kalm never downloads models: the hub is switched off before transformers is imported.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
