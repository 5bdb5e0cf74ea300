"""Shared test settings: offline, and one CPU thread (the test models are tiny, and on a
busy machine extra OpenMP threads mostly wait for each other)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub, not even for a bad model name

import torch  # noqa: E402

torch.set_num_threads(1)
