"""Methods: one file per paper, each composing shared parts, plus the contract they implement
(:class:`MaskedMethod`), the shared pretrainer and the builders train/evaluate/bench use."""

from maskfm.methods.contract import MaskedMethod, Progress
from maskfm.methods.output import MaskedModelingOutput
from maskfm.methods.pretrainer import MaskedPretrainer

__all__ = ["MaskedMethod", "MaskedModelingOutput", "MaskedPretrainer", "Progress"]
