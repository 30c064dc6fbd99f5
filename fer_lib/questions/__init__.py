"""One module per report question: each computes its findings as data (numbers, labels, flags)."""
