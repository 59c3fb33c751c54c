"""Graph passes: small functions Program -> Program, run in order by `run_pipeline`."""
from .cse import cse
from .dce import dce
from .expand import expand_composites
from .fold import fold_constants
from .fuse_optimizer import fuse_optimizer
from .pipeline import DEFAULT_PASSES, PassRecord, default_passes, run_passes, run_pipeline, verify
from .simplify import simplify
from .stabilize import stabilize
from .strided_grads import split_strided_input_grads
from .training import strip_dropout

__all__ = ["cse", "dce", "expand_composites", "fold_constants", "fuse_optimizer", "simplify", "split_strided_input_grads",
           "stabilize", "strip_dropout", "run_pipeline", "run_passes", "default_passes", "verify", "DEFAULT_PASSES", "PassRecord"]
