"""The candidate under test: load a TARGET, call it on a case, get back its gradient."""

from .call import CallResult, Candidate, CandidateError, to_array
from .load import load, relative_to

__all__ = ["CallResult", "Candidate", "CandidateError", "load", "relative_to", "to_array"]
