"""Annotation tables: VinDr boxes and folds, RSNA folds, in-house radiology reports."""
