"""Admission: may a request run now, or must it wait? Priority bands, fair share between tenants, a window per
engine pool that adapts to the engines' load, and protection mode when they saturate."""

from sluice.admission._assembly import DEFAULT_WINDOW_PER_REPLICA, PoolView, assemble_gate
from sluice.admission._fair_queue import FairQueue
from sluice.admission._gate import AdmissionObserver, Gate, GateSettings, Permit, ticket_for
from sluice.admission._protection import ProtectionMode
from sluice.admission._saturation import STALE, LoadReading, SaturationDetector, SaturationInputs
from sluice.admission._slo import TtftPrediction, TtftPredictor
from sluice.admission._ticket import Outcome, Ticket
from sluice.admission._window import AIMDLimit, FixedLimit, GradientLimit, Limit, PerReplicaLimit, Sample

__all__ = [
    "DEFAULT_WINDOW_PER_REPLICA",
    "STALE",
    "AIMDLimit",
    "AdmissionObserver",
    "FairQueue",
    "FixedLimit",
    "Gate",
    "GateSettings",
    "GradientLimit",
    "Limit",
    "LoadReading",
    "Outcome",
    "PerReplicaLimit",
    "Permit",
    "PoolView",
    "ProtectionMode",
    "Sample",
    "SaturationDetector",
    "SaturationInputs",
    "Ticket",
    "TtftPrediction",
    "TtftPredictor",
    "assemble_gate",
    "ticket_for",
]
