"""Shared test settings: the project's modules importable, offline, and one CPU thread (the
test models are tiny, and on a busy machine extra OpenMP threads mostly wait for each other)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub, not even for a bad model name

import torch  # noqa: E402

torch.set_num_threads(1)
