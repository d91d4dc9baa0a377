"""Methods: one file per paper, each composing shared parts, plus the shared pretrainer."""

from maskfm.methods.output import MaskedModelingOutput
from maskfm.methods.pretrainer import MaskedPretrainer

__all__ = ["MaskedModelingOutput", "MaskedPretrainer"]
