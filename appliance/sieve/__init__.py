"""Sieve (RFC 5228) mail filtering: scripts compiled once, run at local delivery.

A pure library below everything else: it parses and checks scripts (syntax.py, grammar.py) and
decides what to do with one message (interpreter.py, conditions.py); the store and queue act on
the decision, vacation.py says whether a reply may go out.
"""

from appliance.sieve.grammar import Script, compile_script
from appliance.sieve.interpreter import Outcome, Store, Vacation, run
from appliance.sieve.message import Envelope
from appliance.sieve.syntax import SieveError

__all__ = ["Envelope", "Outcome", "Script", "SieveError", "Store", "Vacation", "compile_script", "run"]
