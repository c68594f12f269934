"""vla: language-conditioned visual robot manipulation (a GR-1 style video-language-action transformer)."""

import warnings

__version__ = "0.1.0"

# transformers, diffusers and huggingface_hub import tqdm.auto, which in a Jupyter kernel without ipywidgets
# warns "IProgress not found" and falls back to text bars. vla shows none of their bars: the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")
