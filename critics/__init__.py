"""Critic models: training from labels, scoring, calibration (thresholds), evaluation reports."""
