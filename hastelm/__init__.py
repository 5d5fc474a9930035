"""hastelm: a PyTorch LLM inference engine with the published decoding accelerations built in."""
from .decoding.sampling import SamplingParams
from .decoding.step import Completion, StepResult
from .engine import LLM
from .errors import HastelmError

__all__ = ["LLM", "SamplingParams", "Completion", "StepResult", "HastelmError"]
__version__ = "0.1.0"
