"""Calibration stage: statistics of every FC input, then a mode and threshold per FC."""
from scap_ov.calibration.algorithm import calibrate

__all__ = ["calibrate"]
