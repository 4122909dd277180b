"""Judging a predictive: metrics, temperature scaling, ensembles and reliability diagrams."""
