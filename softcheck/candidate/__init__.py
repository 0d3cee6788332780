"""The candidate under test: load a TARGET, call it on a case, get back its gradient."""

from .call import CallPolicy, CallResult, Candidate, CandidateError, to_array
from .load import isolated, load, relative_to, source_of

__all__ = ["CallPolicy", "CallResult", "Candidate", "CandidateError", "isolated", "load",
           "relative_to", "source_of", "to_array"]
