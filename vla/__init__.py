"""vla: language-conditioned visual robot manipulation (a GR-1 style video-language-action transformer)."""

__version__ = "0.1.0"
