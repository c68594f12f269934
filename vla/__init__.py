"""vla: language-conditioned visual robot manipulation (a GR-1 style video-language-action transformer)."""

import os
import warnings

# Intel MKL (torch's CPU matrix products) in strict conditional-numerical-reproducibility mode: without it
# a float32 product may round differently with the memory alignment of its operands, so a run resumed in
# a new process drifts from the uninterrupted run in the last bits. MKL reads this when it first
# computes, so it is set here, before torch computes anything; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

# transformers, diffusers and huggingface_hub import tqdm.auto, which in a Jupyter kernel without ipywidgets
# warns "IProgress not found" and falls back to text bars. vla shows none of their bars: the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")
