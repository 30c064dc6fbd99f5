"""Figures: one module per report question (and `show` for displaying them); these only draw."""
